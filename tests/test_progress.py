"""Following submitted runs: the reason a failed run gives, read from its Flower log; the
progress lines a person reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.flower.progress import ProgressPrinter, Watched, _finished, format_event, reason_from_log
from shared.events import EventLog

pytestmark = pytest.mark.unit


def test_reason_from_a_run_log_is_its_last_error() -> None:
    log = (
        "\x1b[92mINFO \x1b[0m:      Starting run 7\n"
        "ERROR :      resnet50: the ServerApp could not start: PermissionError: [Errno 1] /x/events.jsonl\n"
        "Traceback (most recent call last):\n"
        '  File "server/federation.py", line 12, in run_federation\n'
        "PermissionError: [Errno 1] Operation not permitted: '/x/events.jsonl'\n"
    )
    assert reason_from_log(log) == "PermissionError: [Errno 1] Operation not permitted: '/x/events.jsonl'"
    assert reason_from_log("INFO : all good\n") is None
    assert reason_from_log("ERROR : something broke\nINFO : bye\n") == "ERROR : something broke"


def test_progress_lines_say_what_happens() -> None:
    """A fresh run says it starts (not "resuming after round 0"); round 0 is the initial
    model, which no site built; later rounds name the sites whose updates built them."""
    start = format_event({"event": "run-start", "arch": "resnet50", "rounds": 3, "resume_from": 0})
    assert start == "[resnet50] run started (3 rounds)"
    resumed = format_event({"event": "run-start", "arch": "resnet50", "rounds": 3, "resume_from": 2})
    assert resumed == "[resnet50] run started (3 rounds, resuming after round 2)"
    r0 = format_event({"event": "round", "arch": "resnet50", "round": 0, "sites": [], "val-auc": 0.5})
    assert r0.startswith("[resnet50] round 0 done (the initial model): ") and "AUC 0.500" in r0
    r1 = format_event(
        {"event": "round", "arch": "resnet50", "round": 1, "sites": ["A", "B"], "val-loss": 0.7}
    )
    assert r1.startswith("[resnet50] round 1 done (sites A,B): global val loss 0.700")


def test_runs_that_end_together_keep_each_others_run_done(tmp_path: Path) -> None:
    """Two runs end seconds apart and the SuperLink reports the first finished: the events
    read for it include the second run's run-done, which must reach the second run (it once
    went to the first alone, and the second was failed as ended without an event)."""
    log = EventLog(tmp_path / "metrics.jsonl")
    progress = ProgressPrinter(tmp_path / "metrics.jsonl", out=lambda _: None)
    runs = {"resnet50": Watched("resnet50", 1), "densenet121": Watched("densenet121", 2)}
    log.write("run-done", arch="resnet50")
    log.write("run-done", arch="densenet121")

    def no_log() -> str:
        raise AssertionError("the run's log was asked: its events were lost")

    _finished(runs["resnet50"], runs, "finished:completed", progress, no_log)
    _finished(runs["densenet121"], runs, "finished:completed", progress, no_log)
    assert runs["resnet50"].done and runs["densenet121"].done
