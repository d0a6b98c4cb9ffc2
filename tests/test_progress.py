"""Following submitted runs: the reason a failed run gives, read from its Flower log."""

from __future__ import annotations

import pytest

from deploy.flower.progress import reason_from_log

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
