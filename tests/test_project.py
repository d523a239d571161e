from pathlib import Path

import pytest

from filterkit.errors import InputError
from filterkit.project import BuildSettings, check_name, load_project

GOOD = """\
name: my-filter
language: assemblyscript
plugin_config:
  deny: [{header: x-block}]
istio:
  selector: {app: web}
  priority: 10
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "filterkit.yaml").write_text(text)
    return tmp_path


@pytest.mark.parametrize("name", ["a", "my-filter", "f1", "x" * 63])
def test_valid_names(name):
    assert check_name(name) is None


@pytest.mark.parametrize("name", ["", "My-Filter", "-x", "x-", "a/b", "../x", "a_b", "a.b", "x" * 64, "a b"])
def test_invalid_names(name):
    assert "not a valid filter name" in check_name(name)


def test_loads_project(tmp_path):
    project = load_project(write(tmp_path, GOOD))
    assert project.name == "my-filter"
    assert project.root_id == "my-filter"
    assert project.plugin_config_text == '{"deny":[{"header":"x-block"}]}'
    assert project.istio.selector == (("app", "web"),)
    assert project.istio.priority == 10
    assert project.envoy.version == "1.40.0"
    assert project.wasm_path == tmp_path.resolve() / "build" / "my-filter.wasm"


def test_build_settings(tmp_path):
    project = load_project(write(tmp_path, "name: x\nlanguage: rust\nbuild: {optimize: false, rust_build_std: true, "
                                           "wasm_opt: false, in_container: true, container_image: my/rust:1}\n"))
    assert project.build == BuildSettings(optimize=False, rust_build_std=True, wasm_opt=False, in_container=True,
                                          container_image="my/rust:1")
    assert load_project(write(tmp_path, "name: x\nlanguage: rust\n")).build == BuildSettings()


def test_empty_plugin_config_is_empty_text(tmp_path):
    project = load_project(write(tmp_path, "name: x\nlanguage: assemblyscript\nplugin_config:\n"))
    assert project.plugin_config_text == ""


@pytest.mark.parametrize("text, message", [
    ("name: x\nlanguage: cobol\n", "filterkit.yaml:2: language: 'cobol' is not one of"),
    ("name: Bad_Name\nlanguage: assemblyscript\n", "filterkit.yaml:1: name: 'Bad_Name' is not a valid"),
    ("language: assemblyscript\n", "missing required key 'name'"),
    ("name: x\nlanguage: assemblyscript\nenvoy: {versoin: 1.40.0}\n", "envoy.versoin: unknown key (did you mean 'version'?)"),
    ("name: x\nlanguage: assemblyscript\nistio: {priority: high}\n", ":3: istio.priority: expected a whole number"),
    ("name: x\nlanguage: assemblyscript\nenvoy: {version: latest}\n", "'latest' is not an Envoy version"),
    ("name: x\nlanguage: rust\nbuild: {in_container: maybe}\n", ":3: build.in_container: expected true or false"),
    ("name: x\n  language: [\n", "invalid YAML"),
    ("", "filterkit.yaml is empty"),
])
def test_bad_project_file_gives_one_located_line(tmp_path, text, message):
    with pytest.raises(InputError) as err:
        load_project(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_project_file_says_how_to_fix(tmp_path):
    with pytest.raises(InputError, match="filterkit new"):
        load_project(tmp_path)
