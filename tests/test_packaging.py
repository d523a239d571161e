"""The wheel a user installs with ``pip install filterkit``: it must carry what filterkit renders
(templates/, envoy-configs/, istio/, dotfiles included) and use those copies, not a source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, require


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    # pip fetches the build backend (hatchling) from the package index.
    require("the build backend from the package index", done.returncode == 0, done.stderr.strip()[-300:])
    [built] = out.glob("filterkit-*.whl")
    return built


def test_the_wheel_carries_templates_configs_and_manifests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("templates", "envoy-configs", "istio"):
        expected = {f"filterkit/_data/{p.relative_to(REPO).as_posix()}" for p in (REPO / folder).rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts}
        assert expected and expected <= names, sorted(expected - names)[:5]
    assert "filterkit/_data/templates/rust/.github/workflows/filter.yml" in names
    assert "filterkit/_data/templates/assemblyscript/.gitignore" in names
    assert "filterkit/pytest_plugin.py" in names


def test_an_installed_wheel_scaffolds_and_renders_from_its_own_data(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}  # dependencies come from this environment

    def filterkit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "filterkit", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)

    where = subprocess.run([sys.executable, "-c", "from filterkit.resources import resource_dir; "
                            "print(resource_dir('templates'))"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(site / "filterkit" / "_data" / "templates")
    for lang in ("assemblyscript", "rust"):
        done = filterkit("new", f"from-wheel-{lang[:2]}", "--lang", lang)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / f"from-wheel-{lang[:2]}" / "tests" / "spec.yaml").is_file()
        assert (tmp_path / f"from-wheel-{lang[:2]}" / ".github" / "workflows" / "filter.yml").is_file()
    project = tmp_path / "from-wheel-as"
    (project / "build").mkdir()
    (project / "build" / "from-wheel-as.wasm").write_bytes(b"\0asm\x01\0\0\0")
    done = filterkit("envoy", "config", str(project), "-o", str(tmp_path / "envoy.yaml"))
    assert done.returncode == 0, done.stderr
    assert str(project / "build" / "from-wheel-as.wasm") in (tmp_path / "envoy.yaml").read_text()
    done = filterkit("manifest", "istio", str(project), "--image", "registry.example/f:1")
    assert done.returncode == 0, done.stderr
    assert "kind: WasmPlugin" in (project / "build" / "wasmplugin.yaml").read_text()
