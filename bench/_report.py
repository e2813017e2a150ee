"""What every benchmark's JSON document starts with, and how it is printed and saved."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def header(benchmark: str, **machine: Any) -> dict[str, Any]:
    """The document's first keys: what ran, when, how, and on what (plus ``machine`` extras)."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            **machine,
        },
    }


def dump(document: dict[str, Any], out: str | None) -> str:
    """The document as indented JSON, also written to ``out`` if given."""
    text = json.dumps(document, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    return text
