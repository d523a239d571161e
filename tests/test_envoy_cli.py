"""`filterkit envoy list|install|path` and the version matrix (run_envoy on several Envoy versions)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import filterkit.envoy as envoy_runner
from filterkit.envoy import parse_versions, run_envoy_versions
from filterkit.envoy.binary import envoy_binary
from filterkit.errors import InputError, ToolchainError
from filterkit.project import load_project
from filterkit.spec import load_spec
from filterkit.verdict import judge

from conftest import REPO, require

MATRIX = ("1.36.4", "1.40.0")


def filterkit(*args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "filterkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def fake_envoy(path: Path, version: str = "1.40.0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "envoy  version: 0/{version}/Clean/RELEASE/BoringSSL"
        """))
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_cache(tmp_path) -> Path:
    cache = tmp_path / "cache"
    fake_envoy(cache / "envoy" / "9.9.1" / "envoy", "9.9.1")
    fake_envoy(cache / "envoy" / "9.10.0" / "envoy", "9.10.0")
    return cache


def test_list_offline_shows_the_cache(fake_cache):
    result = filterkit("envoy", "list", env={"FILTERKIT_CACHE": str(fake_cache), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                                             "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["* 9.9.1", "* 9.10.0"]  # numeric order, not text order
    assert "offline" in result.stderr and "2 cached" in result.stderr


def test_list_published_versions_marks_cached():
    result = filterkit("envoy", "list", timeout=120)
    require("the pip index", result.returncode == 0 and "1.40.0" in result.stdout, result.stderr.strip()[-200:])
    lines = result.stdout.splitlines()
    assert any(line.endswith(" 1.36.2") for line in lines) and any(line.endswith(" 1.40.0") for line in lines)


def test_install_cached_version_and_path(fake_cache):
    env = {"FILTERKIT_CACHE": str(fake_cache), "FILTERKIT_ENVOY": ""}
    installed = filterkit("envoy", "install", "9.9.1", env=env)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.strip() == f"9.9.1: {fake_cache / 'envoy' / '9.9.1' / 'envoy'} (already cached)"
    path = filterkit("envoy", "path", "9.10.0", env=env)
    assert path.returncode == 0 and path.stdout.strip() == str(fake_cache / "envoy" / "9.10.0" / "envoy")


def test_bad_version_is_a_usage_error(fake_cache):
    result = filterkit("envoy", "install", "latest", env={"FILTERKIT_CACHE": str(fake_cache)})
    assert result.returncode == 2 and "not an Envoy version like 1.40.0" in result.stderr


def test_envoy_binary_from_path(tmp_path, monkeypatch):
    fake = fake_envoy(tmp_path / "bin" / "envoy", "1.38.3")
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert envoy_binary("1.40.0", "envoy") == fake.resolve()
    result = filterkit("envoy", "path", "--envoy-binary", "envoy", env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0 and result.stdout.strip() == str(fake.resolve())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolchainError, match="'envoy' is not on PATH"):
        envoy_binary("1.40.0", "envoy")


def test_parse_versions():
    assert parse_versions(" 1.36.4,1.40.0 ,1.36.4") == ["1.36.4", "1.40.0"]
    assert parse_versions(["1.40.0"]) == ["1.40.0"]
    with pytest.raises(InputError):
        parse_versions("1.40")
    with pytest.raises(InputError):
        parse_versions(" , ")


@pytest.mark.envoy
def test_reference_filter_on_the_version_matrix(assemblyscript_project):
    """The template's AssemblyScript filter passes its spec on 1.36.x and 1.40.0 (downloaded once into
    the cache, ~37 MB each)."""
    for version in MATRIX:
        try:
            envoy_binary(version)
        except ToolchainError as err:
            require(f"Envoy {version}", False, str(err))
    project = load_project(assemblyscript_project)
    spec = load_spec(project.default_spec)
    runs = run_envoy_versions(spec, project.wasm_path, versions=",".join(MATRIX),
                              default_config=project.plugin_config_text, root_id=project.root_id, name=project.name)
    assert list(runs) == list(MATRIX)
    for version, run in runs.items():
        assert run.envoy_version == version and run.target == f"envoy-{version}"
        failed = [(case.name, obs.error) for case, obs in zip(spec.cases, run.observations)
                  if not judge(case, run.target, obs).passed]
        assert failed == [], version
        assert run.startup_errors == ()


def test_readiness_timeout_names_envoys_output(tmp_path, monkeypatch):
    """An Envoy that never becomes ready: a RunnerError after the timeout, with what it printed, and
    the process is gone."""
    from filterkit.envoy import process as envoy_process
    from filterkit.errors import RunnerError

    fake = tmp_path / "envoy"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        if [ "$1" = --version ]; then echo "envoy  version: 0/1.40.0/Clean/RELEASE/BoringSSL"; exit 0; fi
        echo "@fk|warning|main|stuck before the admin listener"
        echo $$ > "$FK_PIDFILE"
        exec sleep 60
        """))
    fake.chmod(0o755)
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("FK_PIDFILE", str(pidfile))
    monkeypatch.setattr(envoy_process, "READY_TIMEOUT", 1.0)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text("cases: [{name: one}]\n")
    wasm = tmp_path / "f.wasm"
    wasm.write_bytes(b"\0asm\1\0\0\0")
    with pytest.raises(RunnerError, match="did not become ready within 1 s.*stuck before the admin listener"):
        envoy_runner.run_envoy(load_spec(spec_path), wasm, default_config="", root_id="r", name="n",
                               version="1.40.0", binary=fake)
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.envoy
def test_filterkit_test_runs_every_listed_envoy_version(assemblyscript_project):
    from conftest import run_filterkit

    result = run_filterkit("test", assemblyscript_project, "--envoy-version", "1.36.4,1.40.0")
    assert result.returncode == 0, result.stdout + result.stderr
    for label in ("host:", "envoy-1.36.4:", "envoy-1.40.0:"):
        assert any(line.startswith(label) and ", 0 failed" in line for line in result.stdout.splitlines()), label
