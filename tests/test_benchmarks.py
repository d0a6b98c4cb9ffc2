"""The benchmark harness keeps working as the code it times changes (`make benchmark` is not
run in CI; this runs its job and bound code on a tiny load): the job is the CLI's own
measurement, and the bound's workload matches what the job attacked."""

from __future__ import annotations

import pytest

from benchmarks.run import attack_images, bound_passes, make_models, run_job, suite_attack

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["fgsm", "pgd", "uap"])
def test_job_and_bound_run_on_a_tiny_load(name: str) -> None:
    models = make_models(3, 32)
    x = attack_images(8, 32)
    attack = suite_attack(name)
    m = run_job(models, x, 8, attack)
    attacked = {k: len(v) for k, v in m.attacked.items()}
    assert sorted(attacked) == sorted(t.name for t in models)
    if attack.universal:  # half fitted, half held out and probed
        assert all(len(m.fit[k]) + attacked[k] == len(x) for k in attacked), (m.fit, attacked)
    else:  # the biased heads get every image right: all are attacked
        assert set(attacked.values()) == {len(x)}
    assert len(m.cells) == 9
    assert bound_passes(models, x, 8, attacked, attack) > 0
