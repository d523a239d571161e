"""Rendering Envoy bootstraps from ``envoy-configs/``: the test bootstrap (``bootstrap.yaml.j2``) for one
run of a spec, and the user-facing variants of ``filterkit envoy config`` (``VARIANTS``). Every rendered
bootstrap is validated against Envoy's API protos (``validate.py``) before it is returned."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from ..resources import resource_dir
from ..spec import CASE_HEADER

CONFIGS = resource_dir("envoy-configs")
BOOTSTRAP = "bootstrap.yaml.j2"
VM_ID = "filterkit"
# Marker lines in Envoy's output (see filterkit/envoy/logs.py for the whole line format).
BEGIN_MARKER = "filterkit-case-begin"
END_MARKER = "@filterkit-case-end"

# Characters YAML does not allow unescaped in a double-quoted scalar (besides what JSON escapes).
_YAML_UNPRINTABLE = re.compile("[\x7f-\x84\x86-\x9f\ud800-\udfff\ufeff\ufffe\uffff]")


def yaml_string(value: object) -> str:
    """``value`` as a double-quoted scalar that JSON and YAML both read back exactly."""
    text = json.dumps(value, ensure_ascii=False)
    return _YAML_UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@dataclass(frozen=True)
class Listener:
    name: str
    port: int  # 0: Envoy picks a free port (read back from the admin API)
    config: str | None  # the exact plugin configuration text; None: control listener, no filter


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(CONFIGS)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, autoescape=False)
    env.filters["tojson"] = yaml_string
    return env


FAILURE_POLICIES = ("FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD")


def _check_policy(failure_policy: str | None) -> str | None:
    if failure_policy is None:
        return None
    policy = failure_policy.upper().replace("-", "_")
    if not policy.startswith("FAIL_"):
        policy = "FAIL_" + policy
    if policy not in FAILURE_POLICIES:
        from ..errors import InputError
        raise InputError(f"unknown failure policy {failure_policy!r}; use one of {', '.join(FAILURE_POLICIES)}")
    return policy


def render_bootstrap(*, wasm_path: Path | str, listeners: list[Listener] | tuple[Listener, ...], plugin_name: str,
                     root_id: str, upstream_port: int, admin_port: int = 0, vm_id: str = VM_ID,
                     failure_policy: str | None = None, call_clusters: dict[str, int] | None = None,
                     validate: bool = True) -> str:
    """The bootstrap YAML: admin on 127.0.0.1:admin_port, one listener per plugin configuration, each
    running the Lua case marker, the filter under test and the router to 127.0.0.1:upstream_port;
    ``call_clusters``: ``{cluster name: port on 127.0.0.1}`` for the filter's http calls."""
    template = _environment().get_template(BOOTSTRAP)
    text = template.render(
        admin_port=admin_port,
        upstream_port=upstream_port,
        call_clusters=[{"name": name, "port": port} for name, port in (call_clusters or {}).items()],
        listeners=list(listeners),
        wasm_path=str(Path(wasm_path).resolve()),
        plugin_name=plugin_name,
        root_id=root_id,
        vm_id=vm_id,
        case_header=CASE_HEADER,
        begin_marker=BEGIN_MARKER,
        end_marker=END_MARKER,
        failure_policy=_check_policy(failure_policy),
    )
    if validate:
        from .validate import validate_bootstrap
        validate_bootstrap(text, source=BOOTSTRAP)
    return text


# `filterkit envoy config --variant …` → template (see the template's header for what it renders).
VARIANTS = {
    "http": "http.yaml.j2",        # HTTP filter chain, wasm from a local file, filters in order, router
    "network": "network.yaml.j2",  # envoy.filters.network.wasm filters, then tcp_proxy
    "ecds": "ecds.yaml.j2",        # HTTP chain, each filter's config through ECDS (file or xDS)
}
ECDS_RESOURCES = "ecds-resources.yaml.j2"


@dataclass(frozen=True)
class WasmFilter:
    """One wasm filter of a user-facing config (several run in list order)."""

    name: str
    root_id: str
    wasm_path: str
    config: str = ""
    vm_id: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "root_id": self.root_id, "wasm_path": str(Path(self.wasm_path).resolve()),
                "config": self.config, "vm_id": self.vm_id or self.name}


@dataclass(frozen=True)
class RenderedConfig:
    bootstrap: str
    # variant "ecds" with a file source: the ECDS file of each filter, path → text (one resource per file)
    ecds_files: dict[str, str] = field(default_factory=dict)


def ecds_file_name(filter_name: str) -> str:
    return f"{filter_name}.ecds.yaml"


def render_variant(variant: str, filters: list[WasmFilter], *, listen_port: int = 10000,
                   upstream_host: str = "127.0.0.1", upstream_port: int = 8080, admin_port: int = 9901,
                   failure_policy: str | None = None, runtime: str = "envoy.wasm.runtime.v8",
                   ecds_source: str = "path", ecds_dir: str | Path = ".", xds_host: str = "127.0.0.1",
                   xds_port: int = 18000, version_info: str = "1", local_reply: bool = False,
                   validate: bool = True) -> RenderedConfig:
    """A user-facing bootstrap (``VARIANTS``), validated; for ``ecds`` from files also the ECDS files
    (``<ecds_dir>/<filter>.ecds.yaml``), which the caller writes."""
    from ..errors import InputError
    if variant not in VARIANTS:
        raise InputError(f"unknown config variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if not filters:
        raise InputError("a config needs at least one filter")
    if len({f.name for f in filters}) != len(filters):
        raise InputError("filter names must be distinct (they name the Envoy filters)")
    if ecds_source not in ("path", "xds"):
        raise InputError(f"unknown ECDS source {ecds_source!r}; use 'path' or 'xds'")
    policy = _check_policy(failure_policy)
    rendered = []
    for f in filters:
        item = f.as_dict()
        item["ecds_path"] = str((Path(ecds_dir) / ecds_file_name(f.name)).resolve())
        rendered.append(item)
    values = dict(filters=rendered, listen_port=listen_port, upstream_host=upstream_host,
                  upstream_port=upstream_port, admin_port=admin_port, failure_policy=policy,
                  runtime=runtime, ecds_source=ecds_source, xds_host=xds_host, xds_port=xds_port,
                  local_reply=local_reply)
    env = _environment()
    text = env.get_template(VARIANTS[variant]).render(**values)
    if validate:
        from .validate import validate_bootstrap
        validate_bootstrap(text, source=VARIANTS[variant])
    files = {}
    if variant == "ecds" and ecds_source == "path":
        for f, item in zip(filters, rendered):
            files[item["ecds_path"]] = render_ecds_resource(f, failure_policy=policy, runtime=runtime,
                                                            version_info=version_info, validate=validate)
    return RenderedConfig(text, files)


def render_ecds_resource(f: WasmFilter, *, failure_policy: str | None = None,
                         runtime: str = "envoy.wasm.runtime.v8", version_info: str = "1",
                         validate: bool = True) -> str:
    """One filter's ECDS file (also for reconfiguring a running Envoy: write a temp file, then rename)."""
    text = _environment().get_template(ECDS_RESOURCES).render(
        f=f.as_dict(), failure_policy=_check_policy(failure_policy), runtime=runtime, version_info=version_info)
    if validate:
        from .validate import validate_discovery_response
        validate_discovery_response(text, source=ECDS_RESOURCES)
    return text
