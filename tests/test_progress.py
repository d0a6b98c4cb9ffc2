"""Following submitted runs: the reason a failed run gives, read from its Flower log; the
progress lines a person reads."""

from __future__ import annotations

import pytest

from deploy.flower.progress import format_event, reason_from_log

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
