"""Shared fixtures. Components a test needs (node, Envoy, …) are checked here: absent locally means
skip with a reason naming it; in CI (CI=true) absent means fail, since CI installs everything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(component: str, available: bool, how: str) -> None:
    """Skip (locally) or fail (in CI) when ``component`` is not available."""
    if available:
        return
    message = f"{component} is not available ({how})"
    if IN_CI:
        pytest.fail(message + " — CI must provide it")
    pytest.skip(message)


def run_filterkit(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "filterkit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)},
                          stdin=subprocess.DEVNULL)
