"""What every benchmark records beside its figures: the code it measured and the machine."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _git(*cmd: str) -> str | None:
    """Git's output in this checkout; ``None`` when git cannot answer."""
    try:
        done = subprocess.run(
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def source(*paths: str, dirty_key: str = "lrsearch_uncommitted_changes") -> dict[str, Any]:
    """The commit measured, and whether ``paths`` (default: the package) had uncommitted changes
    (``None``: git could not tell)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", *(paths or ("lrsearch",)))
    return {"commit": commit or None, dirty_key: None if status is None else bool(status)}


def machine() -> dict[str, Any]:
    """The machine and the library versions; each benchmark adds what it needs beside them."""
    import optuna
    import sqlalchemy
    import torch

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15_at_end": load,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "sqlalchemy": sqlalchemy.__version__,
    }


def clean(value: Any) -> Any:
    """``value`` with every non-finite float made ``None``: the JSON stays standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value
