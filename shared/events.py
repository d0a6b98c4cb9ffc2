"""The federation's event log: JSON Lines beside the checkpoints (`metrics.jsonl`).

The ServerApp appends one line per event (a site's reply, a round, a failure); the
launchers read it to print progress and to learn why a run failed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class EventLog:
    """Append-only JSON Lines; each line is flushed so a watcher sees it at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        row = {"time": round(time.time(), 3), "event": event, **fields}
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")
            fh.flush()


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the log (none when it does not exist yet)."""
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return rows
