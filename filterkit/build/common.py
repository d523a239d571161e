"""What every language's build shares: the error type, the fingerprint and stamp that make an
unchanged project a no-op, and small helpers to run tools."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Iterable

from .. import __version__
from ..errors import FilterkitError, ToolchainError

STAMP = ".filterkit-build.json"


class BuildError(FilterkitError):
    """The compiler rejected the filter's source: a result about the user's code, exit code 1.

    ``str(err)`` is the summary line; ``diagnostics`` holds the compiler's own messages (with
    file:line), printed after it.
    """

    exit_code = 1

    def __init__(self, summary: str, diagnostics: str):
        self.diagnostics = diagnostics
        super().__init__(summary)


def fingerprint(project, inputs: Iterable[Path], settings: str = "") -> str:
    """Hash of everything that goes into a build: filterkit's version, the project's build settings,
    builder-specific ``settings`` (tool overrides from the environment …) and the input files."""
    h = hashlib.sha256()
    h.update(f"filterkit {__version__}\n{project.language}\n{project.name}\n{project.build}\n{settings}\n".encode())
    for path in sorted(set(inputs)):
        h.update(path.relative_to(project.root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def read_stamp(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_stamp(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(root: Path, patterns: Iterable[str]) -> list[Path]:
    return [p for pattern in patterns for p in root.glob(pattern) if p.is_file()]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError as err:
        raise ToolchainError(f"cannot run {cmd[0]}: {err.strerror}") from None
    except PermissionError as err:
        raise ToolchainError(f"cannot run {cmd[0]}: {err.strerror}") from None


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
