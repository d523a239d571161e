"""``filterkit manifest istio``: an ``extensions.istio.io/v1alpha1`` WasmPlugin for a built filter.

``spec.sha256`` follows Istio's rule: for an ``http(s)://`` or ``file://`` URL it is the sha256 of the
module; for an ``oci://`` image it is the image (manifest) digest, so it is written only when the
reference is pinned by digest (``…@sha256:<hex>``). The module's own sha256 is always recorded in
the ``filterkit.dev/module-sha256`` annotation.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import jinja2
import yaml

from .. import __version__
from ..errors import InputError
from ..project import Project
from ..resources import resource_dir

TEMPLATE = resource_dir("istio") / "wasmplugin.yaml.j2"
_DIGEST = re.compile(r"@sha256:([0-9a-f]{64})$")
# registry[:port]/path[:tag][@sha256:digest], as Docker and OCI references are written.
_IMAGE_REF = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._/-][a-z0-9]+)*)+"
                        r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?")


def plugin_url(image: str) -> str:
    """The ``spec.url`` for ``image``: an OCI reference (with or without ``oci://``) or an http(s)/file URL."""
    if image.startswith(("http://", "https://", "file://")):
        return image
    ref = image.removeprefix("oci://")
    if not _IMAGE_REF.fullmatch(ref):
        raise InputError(f"--image '{image}' is not an OCI image reference like "
                         "registry.example.com/filters/my-filter:1.0 (or an http(s):// / file:// URL)")
    return "oci://" + ref


def istio_manifest(project: Project, image: str, module_sha256: str) -> str:
    url = plugin_url(image)
    if url.startswith("oci://"):
        pinned = _DIGEST.search(url)
        sha256 = pinned.group(1) if pinned else None
    else:
        sha256 = module_sha256
    config = project.plugin_config
    if config is not None and not isinstance(config, dict):
        raise InputError("plugin_config must be a mapping for Istio (WasmPlugin.pluginConfig is a JSON "
                         "object); change it in filterkit.yaml", path=project.file)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_yaml"] = _to_yaml
    istio = project.istio
    return env.from_string(TEMPLATE.read_text()).render(
        name=project.name,
        namespace=istio.namespace,
        selector=istio.selector,
        url=url,
        sha256=sha256,
        module_sha256=module_sha256,
        plugin_name=project.root_id,
        phase=istio.phase,
        priority=istio.priority,
        fail_strategy=istio.fail_strategy,
        plugin_config=config if config else None,
        filterkit_version=__version__,
    )


def write_istio_manifest(project: Project, image: str, module_sha256: str, out: Path) -> Path:
    text = istio_manifest(project, image, module_sha256)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, prefix=f".{out.name}.", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, out)
    return out


def _to_yaml(value: object, indent: int) -> str:
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, allow_unicode=True)
    pad = " " * indent
    return "\n".join(pad + line for line in text.rstrip("\n").splitlines())
