"""The unit of analysis, against hand computations: the cell-level means' two-way cluster
bootstrap (cells that share a source move together), the model-level global-vs-local
comparison beside the per-source one, and what the provenance records (the code's
commit read from the checkout's git files, torch's thread count, Pillow's version)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attack.measure.core import Cell, Measurement, Settings
from attack.reports.provenance import code_commit, provenance
from attack.reports.tables import Info, cell_group, model_differences, model_level, source_differences
from attack.stats import bootstrap_mean, cluster_bootstrap_mean

pytestmark = pytest.mark.unit


def test_with_one_target_the_cluster_bootstrap_is_the_bootstrap_over_sources() -> None:
    """One column: every replicate keeps the one target, so resampling sources is resampling
    the cells; the same seed draws the same sources as bootstrap_mean's resampling."""
    values = [0.1, 0.4, 0.35, 0.8, 0.2]
    rows = ["a", "b", "c", "d", "e"]  # sorted: the row order is the value order
    ours = cluster_bootstrap_mean(values, rows, ["t"] * 5, seed=3, reps=4000)
    plain = bootstrap_mean(values, seed=3, reps=4000)
    assert ours.value == pytest.approx(plain.value)
    assert ours.low == pytest.approx(plain.low) and ours.high == pytest.approx(plain.high)


def test_cells_sharing_a_source_widen_the_interval_to_the_hand_computed_one() -> None:
    """Two sources, five targets; every cell of source a is 0, of source b is 1. A
    replicate's mean is 0 (a drawn twice, p 1/4), 1 (b twice, 1/4) or 1/2: the 95% interval
    is [0, 1] exactly. Ten independent cells would claim [0.2, 0.8]."""
    rows = ["a"] * 5 + ["b"] * 5
    cols = [f"t{i}" for i in range(5)] * 2
    values = [0.0] * 5 + [1.0] * 5
    clustered = cluster_bootstrap_mean(values, rows, cols, seed=0)
    assert (clustered.value, clustered.low, clustered.high) == (0.5, 0.0, 1.0)
    naive = bootstrap_mean(values, seed=0)
    assert naive.low == pytest.approx(0.2) and naive.high == pytest.approx(0.8)


def test_a_target_effect_is_clustered_as_well() -> None:
    """Rows and columns are resampled independently: with the effect on the targets the
    interval is as wide as with it on the sources."""
    rows = [f"s{i}" for i in range(5)] * 2
    cols = ["a"] * 5 + ["b"] * 5
    values = [0.0] * 5 + [1.0] * 5
    i = cluster_bootstrap_mean(values, rows, cols, seed=0)
    assert (i.low, i.high) == (0.0, 1.0)


def test_one_cell_or_none_gives_no_interval() -> None:
    one = cluster_bootstrap_mean([0.3, float("nan")], ["a", "b"], ["x", "y"])
    assert one.value == 0.3 and np.isnan(one.low)
    assert np.isnan(cluster_bootstrap_mean([], [], []).value)


INFO = {
    n: Info(n, arch, kind)
    for n, arch, kind in [
        ("r-global", "r", "global"),
        ("r-local-A", "r", "local"),
        ("r-local-B", "r", "local"),
        ("d-global", "d", "global"),
        ("d-local-A", "d", "local"),
    ]
}


def _measurement(misclassified: dict[tuple[str, str], int]) -> Measurement:
    """Every model attacks every model on 20 images; `misclassified` of them flip."""
    names = list(INFO)
    m = Measurement("fgsm", 0.02, names, names)
    m.cells = [Cell(s, t, 20, misclassified.get((s, t), 0), 0, s == t) for s in names for t in names]
    return m


def test_the_model_level_difference_is_the_global_target_mean_minus_its_locals() -> None:
    m = _measurement(
        {
            ("d-global", "r-global"): 2,  # r-global as a target: (2 + 4 + 0 + 0) / 4 / 20 = 0.075
            ("r-local-A", "r-global"): 4,
            ("r-global", "r-local-A"): 8,  # r-local-A: 8 / 4 / 20 = 0.1
            ("r-global", "r-local-B"): 12,  # r-local-B: (12 + 4) / 4 / 20 = 0.2
            ("d-local-A", "r-local-B"): 4,
            ("r-global", "d-global"): 10,  # d-global: 10 / 4 / 20 = 0.125
            ("r-global", "d-local-A"): 6,  # d-local-A: (6 + 6) / 4 / 20 = 0.15
            ("r-local-B", "d-local-A"): 6,
        }
    )
    d_diff, r_diff = 0.125 - 0.15, 0.075 - (0.1 + 0.2) / 2  # architectures in sorted order: d, r
    assert model_differences(m, INFO) == pytest.approx([d_diff, r_diff])
    test = model_level(m, INFO, 0)
    # both negative: of the four sign patterns, ++ and -- reach |mean|: p = 2/4
    assert (test.n, test.exact, test.p_value) == (2, True, 0.5)
    assert test.mean_difference.value == pytest.approx((d_diff + r_diff) / 2)
    # the per-source test pairs the sources (five), not the (source, target) cells
    assert len(source_differences(m, INFO)) == 5


def test_the_cell_group_uses_the_cluster_interval_and_keeps_n_and_sd() -> None:
    m = _measurement({(s, t): (7 if s.startswith("r") else 1) for s in INFO for t in INFO if s != t})
    cells = [c for c in m.cells if not c.white_box]
    g = cell_group(cells, 0)
    rates = [c.n_misclassified_after / 20 for c in cells]
    hand = cluster_bootstrap_mean(rates, [c.source for c in cells], [c.target for c in cells], 0)
    assert (g.n, g.images) == (20, 400)
    assert g.mean == hand
    assert g.sd == pytest.approx(float(np.std(rates, ddof=1)))


def test_provenance_records_commit_threads_and_pillow(tmp_path: Path) -> None:
    p = provenance(Settings(4, torch.device("cpu"), torch.float32, 0, 0.5), "fp").to_json()
    assert p["threads"] == torch.get_num_threads() >= 1
    versions = p["versions"]
    assert isinstance(versions, dict) and versions["pillow"].split(".")[0].isdigit()
    assert code_commit(tmp_path) == "unknown"  # no checkout here


def test_the_commit_is_read_from_the_git_files(tmp_path: Path) -> None:
    """A loose ref, a packed ref, a detached HEAD, a worktree's .git file."""
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
    assert code_commit(tmp_path / "repo") == "a" * 40
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{'b' * 40} refs/heads/main\n")
    assert code_commit(tmp_path / "repo") == "b" * 40
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert code_commit(tmp_path / "repo") == "c" * 40
    work = tmp_path / "work"
    (git / "worktrees" / "w").mkdir(parents=True)
    (git / "worktrees" / "w" / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "worktrees" / "w" / "commondir").write_text("../..\n")
    work.mkdir()
    (work / ".git").write_text(f"gitdir: {git / 'worktrees' / 'w'}\n")
    assert code_commit(work) == "b" * 40
    (git / "HEAD").write_text("not a commit\n")
    assert code_commit(tmp_path / "repo") == "unknown"
