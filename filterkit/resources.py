"""Where the files filterkit renders live: ``templates/``, ``envoy-configs/`` and ``istio/``.

In a source checkout (and an editable install) they are the top-level folders of the repository; an
installed wheel carries them inside the package, under ``filterkit/_data/`` (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder ``name`` (``templates``, ``envoy-configs`` or ``istio``) of this installation."""
    installed = _PACKAGE / "_data" / name
    return installed if installed.is_dir() else _PACKAGE.parent / name
