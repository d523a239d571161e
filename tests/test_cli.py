"""The CLI as a user runs it: exit codes, one-line errors, --help everywhere."""

from pathlib import Path

import pytest

from conftest import run_filterkit
from filterkit import __version__


def test_version():
    result = run_filterkit("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize("command", [[], ["new"], ["build"], ["test"], ["manifest"], ["manifest", "istio"]])
def test_help_on_every_command(command):
    result = run_filterkit(*command, "--help")
    assert result.returncode == 0
    assert "Usage: " in result.stdout


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_new_refuses_traversal_name(tmp_path):
    assert_one_line_error(run_filterkit("new", "../evil", cwd=tmp_path), "not a valid filter name")
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_unknown_language(tmp_path):
    result = run_filterkit("new", "x", "--lang", "cobol", cwd=tmp_path)
    assert result.returncode == 2
    assert "cobol" in result.stderr


def test_new_refuses_non_empty_dir(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("mine")
    assert_one_line_error(run_filterkit("new", "x", cwd=tmp_path), "not empty", "--force")
    assert (tmp_path / "x" / "mine.txt").read_text() == "mine"


def test_build_without_project(tmp_path):
    assert_one_line_error(run_filterkit("build", tmp_path), "no filterkit.yaml", "filterkit new")


def test_malformed_project_file(tmp_path):
    (tmp_path / "filterkit.yaml").write_text("name: x\nlanguage: assemblyscript\nbuild: {optimise: true}\n")
    assert_one_line_error(run_filterkit("test", tmp_path), "filterkit.yaml:3: build.optimise: unknown key",
                          "did you mean 'optimize'?")


def test_malformed_spec_file(tmp_path):
    (tmp_path / "filterkit.yaml").write_text("name: x\nlanguage: assemblyscript\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "spec.yaml").write_text("cases:\n  - request: {path: nope}\n")
    assert_one_line_error(run_filterkit("test", tmp_path), "spec.yaml:2: cases[0].request.path",
                          "must start with '/'")


def test_missing_spec_file(tmp_path):
    (tmp_path / "filterkit.yaml").write_text("name: x\nlanguage: assemblyscript\n")
    assert_one_line_error(run_filterkit("test", tmp_path, "--spec", tmp_path / "none.yaml"), "spec file not found")


def test_manifest_needs_an_image(tmp_path):
    (tmp_path / "filterkit.yaml").write_text("name: x\nlanguage: assemblyscript\n")
    assert_one_line_error(run_filterkit("manifest", "istio", tmp_path), "no image given", "--image")


def test_no_build_without_a_build(tmp_path):
    (tmp_path / "filterkit.yaml").write_text("name: x\nlanguage: assemblyscript\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "spec.yaml").write_text("cases:\n  - name: a\n")
    assert_one_line_error(run_filterkit("test", tmp_path, "--no-build"), "not built yet")
