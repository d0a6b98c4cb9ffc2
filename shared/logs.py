"""Logging set-up for command-line entry points."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    """Concise timestamped logs on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # httpx logs every request at INFO (the Fleet proxy's forwarding: most of a server log)
    for noisy in ("PIL", "matplotlib", "urllib3", "timm", "fsspec", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # pydicom logs a full traceback for each decoder failure (and warnings for odd tags)
        # although the error reaches the caller, which reports the file as unreadable in its
        # own words. Flower: warnings and errors only.
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
        logging.getLogger("flwr").setLevel(logging.WARNING)
