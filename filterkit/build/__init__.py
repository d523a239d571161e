"""``filterkit build``: compile a filter project to ``build/<name>.wasm`` plus its sha256.

A build is skipped when nothing that goes into it changed: the fingerprint of the sources, the
lockfile, the build settings and filterkit's own version is kept in ``build/.filterkit-build.json``.
The new module is written beside the old one and moved into place only when the compiler succeeded,
so a failed build never destroys the last good ``.wasm``.

One module per language (``assemblyscript.py``, ``rust.py``) provides a builder with
``inputs(root)``, ``settings(project)`` (extra fingerprint material) and ``compile(project, out, log)``;
``container.py`` runs the Rust compile step in a container instead (``--in-container``); ``common.py``
holds what they share.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..project import Project
from .assemblyscript import AssemblyScriptBuilder
from .container import BuildContainer, ContainerRustBuilder, check_language
from .common import STAMP, BuildError, fingerprint, read_stamp, sha256_of, write_stamp
from .rust import RustBuilder

__all__ = ["BuildContainer", "BuildError", "BuildResult", "build_project", "STAMP"]


@dataclass(frozen=True)
class BuildResult:
    wasm: Path
    sha256: str
    size: int
    skipped: bool  # True: up to date, nothing was compiled
    seconds: float


_BUILDERS = {"assemblyscript": AssemblyScriptBuilder(), "rust": RustBuilder()}


def build_project(project: Project, force: bool = False, log=print,
                  container: BuildContainer | None = None) -> BuildResult:
    """Compile ``project`` unless its last build is up to date (or ``force``); in a container when
    ``container`` is given or the project says ``build: {in_container: true}`` (Rust only)."""
    started = time.monotonic()
    if container is None and project.build.in_container:
        container = BuildContainer()
    if container is not None:
        check_language(project)
        builder = ContainerRustBuilder(container)
    else:
        builder = _BUILDERS[project.language]
    out = project.wasm_path
    stamp_file = out.parent / STAMP
    settings = builder.settings(project)
    current = fingerprint(project, builder.inputs(project.root), settings)
    if not force and out.is_file():
        stamp = read_stamp(stamp_file)
        if stamp.get("fingerprint") == current:
            digest = sha256_of(out)
            if stamp.get("sha256") == digest:
                return BuildResult(out, digest, out.stat().st_size, True, time.monotonic() - started)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        details = builder.compile(project, partial, log) or {}
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    digest = sha256_of(out)
    (out.parent / f"{out.name}.sha256").write_text(f"{digest}  {out.name}\n")
    # The fingerprint is taken again: a first build creates the lockfile, which is an input.
    current = fingerprint(project, builder.inputs(project.root), settings)
    write_stamp(stamp_file, {"fingerprint": current, "sha256": digest, **details})
    return BuildResult(out, digest, out.stat().st_size, False, time.monotonic() - started)
