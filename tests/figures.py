"""Figures the reliability probes record for docs/reliability.md: one JSON
line per probe appended to $SOCKLB_RELIABILITY_OUT (nothing is written
without it). `make reliability` runs the probes and renders the document
(scripts/reliability.py)."""
from __future__ import annotations

import json
import os


def record(probe: str, cases: int, result: str, **figures) -> None:
    """probe: what was done; cases: how many times; result: what held
    (e.g. "0 failed connections, 0 lost writes"); figures: the counts."""
    path = os.environ.get("SOCKLB_RELIABILITY_OUT")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"probe": probe, "cases": cases, "result": result, **figures}) + "\n")
