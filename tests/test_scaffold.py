from pathlib import Path

import pytest
import yaml

from filterkit import scaffold
from filterkit.errors import InputError
from filterkit.project import load_project
from filterkit.scaffold import new_project


@pytest.fixture
def template(tmp_path, monkeypatch):
    root = tmp_path / "templates"
    lang = root / "assemblyscript"
    (lang / "assembly").mkdir(parents=True)
    (lang / "filterkit.yaml").write_text("name: {{ name }}\nlanguage: assemblyscript\nroot_id: {{ root_id }}\n")
    (lang / "assembly" / "{{ name }}.ts.j2").write_text("// {{ name }} v{{ filterkit_version }}\n")
    (lang / "logo.bin").write_bytes(b"\xff\x00\xfe")
    monkeypatch.setattr(scaffold, "TEMPLATES", root)
    return lang


def test_renders_names_contents_and_binary_files(template, tmp_path):
    made = new_project("my-filter", "assemblyscript", tmp_path / "out")
    root = tmp_path / "out"
    assert sorted(p.as_posix() for p in made.files) == ["assembly/my-filter.ts", "filterkit.yaml", "logo.bin"]
    assert (root / "assembly" / "my-filter.ts").read_text().startswith("// my-filter v")
    assert (root / "logo.bin").read_bytes() == b"\xff\x00\xfe"
    assert load_project(root).name == "my-filter"


@pytest.mark.parametrize("name", ["../evil", "a/b", "Bad", "x_y", ""])
def test_refuses_bad_names_and_writes_nothing(template, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(InputError, match="not a valid filter name"):
        new_project(name, "assemblyscript")
    assert sorted(tmp_path.rglob("*")) == before


def test_refuses_non_empty_folder_and_keeps_its_files(template, tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "filterkit.yaml").write_text("mine\n")
    with pytest.raises(InputError, match="not empty.*--force"):
        new_project("my-filter", "assemblyscript", root)
    assert (root / "filterkit.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in root.iterdir()) == ["filterkit.yaml"]


def test_force_writes_template_files_and_keeps_others(template, tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "notes.txt").write_text("keep me\n")
    new_project("my-filter", "assemblyscript", root, force=True)
    assert (root / "notes.txt").read_text() == "keep me\n"
    assert (root / "filterkit.yaml").is_file()


def test_a_broken_template_leaves_no_half_project(template, tmp_path):
    (template / "zzz.txt").write_text("{{ undefined_variable }}\n")
    with pytest.raises(Exception):
        new_project("my-filter", "assemblyscript", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_real_assemblyscript_template_renders_a_valid_project(tmp_path):
    root = tmp_path / "demo"
    made = new_project("demo", "assemblyscript", root)
    names = {p.as_posix() for p in made.files}
    for expected in ("filterkit.yaml", "package.json", "asconfig.json", "tests/spec.yaml", ".gitignore",
                     "README.md", ".github/workflows/filter.yml", "assembly/index.ts"):
        assert expected in names
    project = load_project(root)
    assert (project.name, project.root_id, project.language) == ("demo", "demo", "assemblyscript")
    workflow = yaml.safe_load((root / ".github/workflows/filter.yml").read_text())
    steps = " ".join(str(step.get("run", "")) for job in workflow["jobs"].values() for step in job["steps"])
    assert "filterkit build" in steps and "filterkit test" in steps and "--junit" in steps
    from filterkit.spec import load_spec

    assert len(load_spec(root / "tests" / "spec.yaml").cases) >= 3
