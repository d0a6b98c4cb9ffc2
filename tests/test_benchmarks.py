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


def test_the_harness_times_a_transformer_and_a_convnext_against_their_bound() -> None:
    """`--archs`: the attack job and its compute bound over other families (issue 32)."""
    archs = ("deit_tiny_patch16_224", "convnext_atto")
    models = make_models(2, 32, archs)
    assert [t.arch for t in models] == list(archs)
    x = attack_images(4, 32)
    m = run_job(models, x, 4)
    attacked = {k: len(v) for k, v in m.attacked.items()}
    assert set(attacked.values()) == {4} and len(m.cells) == 4
    assert bound_passes(models, x, 4, attacked) > 0


def test_the_bound_counts_the_gradient_passes_each_attack_needs() -> None:
    """Demo config: 5 steps; SI 5 scale copies, VMI 20 neighbours (not on the last step),
    BSR 20 block copies; TI and SGM cost no extra pass; the UAP one per epoch (10)."""
    from benchmarks.run import gradient_passes

    expected = {"fgsm": 1, "pgd": 5, "nifgsm": 5, "tifgsm": 5, "sgm": 5, "pgd+margin": 5}
    expected |= {"sinifgsm": 25, "vmifgsm": 5 + 4 * 20, "bsr": 100, "uap": 10}
    assert {name: gradient_passes(suite_attack(name)) for name in expected} == expected
