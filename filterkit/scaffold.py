"""``filterkit new``: render a project template into a new folder: ``templates/common/`` (what every
language shares: the spec file and the pytest unit tests, since every template holds the same policy
filter), then ``templates/<language>/`` over it."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import __version__
from .errors import InputError
from .project import DEFAULT_ENVOY_VERSION, LANGUAGES, check_name
from .resources import resource_dir

TEMPLATES = resource_dir("templates")
COMMON = "common"  # rendered first for every language


@dataclass(frozen=True)
class Scaffolded:
    root: Path
    files: tuple[Path, ...]


def new_project(name: str, language: str, dest: Path | None = None, force: bool = False) -> Scaffolded:
    """Create project ``name`` in ``dest`` (default ``./name``) from the ``language`` template.

    An existing non-empty folder is refused unless ``force``; with ``force`` only the template's
    files are written (rendered into a scratch folder first), other files stay as they were.
    """
    problem = check_name(name)
    if problem:
        raise InputError(f"{problem}; try e.g. 'my-filter'")
    if language not in LANGUAGES:
        raise InputError(f"unknown language '{language}' (choose one of: {', '.join(LANGUAGES)})")
    root = (dest if dest is not None else Path(name)).resolve()
    if root.exists() and not root.is_dir():
        raise InputError("exists and is not a folder; choose another --dir", path=root)
    if root.is_dir() and any(root.iterdir()) and not force:
        raise InputError("folder is not empty; choose another --dir, or pass --force to write the "
                         "template's files into it (other files are kept)", path=root)
    template = TEMPLATES / language
    if not template.is_dir():
        raise InputError(f"no template for {language} in this filterkit installation ({template} is missing; "
                         "reinstall filterkit)")
    variables = {"name": name, "root_id": name, "filterkit_version": __version__,
                 "envoy_version": DEFAULT_ENVOY_VERSION, "language": language}
    root.parent.mkdir(parents=True, exist_ok=True)
    # Render everything first, so a template error leaves the user's folder untouched.
    with tempfile.TemporaryDirectory(prefix=".filterkit-new-", dir=root.parent) as scratch:
        files = list(dict.fromkeys(_render_tree(TEMPLATES / COMMON, Path(scratch), variables)
                                   + _render_tree(template, Path(scratch), variables)))
        root.mkdir(exist_ok=True)
        for rel in files:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(scratch) / rel, target)
    return Scaffolded(root=root, files=tuple(files))


def _render_tree(template: Path, out: Path, variables: dict[str, str]) -> list[Path]:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    written = []
    for source in sorted(p for p in template.rglob("*") if p.is_file()):
        rel_template = source.relative_to(template).as_posix()
        rel = Path(env.from_string(rel_template).render(variables))
        if rel.suffix == ".j2":
            rel = rel.with_suffix("")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if _is_text(source):
            target.write_text(env.get_template(rel_template).render(variables), encoding="utf-8")
        else:
            shutil.copyfile(source, target)
        shutil.copymode(source, target)
        written.append(rel)
    return written


def _is_text(path: Path) -> bool:
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return False
    return True
