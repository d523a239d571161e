"""Rendering the Envoy bootstrap (``envoy-configs/bootstrap.yaml.j2``) for one run of a spec."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from ..spec import CASE_HEADER

CONFIGS = Path(__file__).resolve().parents[2] / "envoy-configs"
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


def render_bootstrap(*, wasm_path: Path | str, listeners: list[Listener] | tuple[Listener, ...], plugin_name: str,
                     root_id: str, upstream_port: int, admin_port: int = 0, vm_id: str = VM_ID) -> str:
    """The bootstrap YAML: admin on 127.0.0.1:admin_port, one listener per plugin configuration, each
    running the Lua case marker, the filter under test and the router to 127.0.0.1:upstream_port."""
    template = _environment().get_template(BOOTSTRAP)
    return template.render(
        admin_port=admin_port,
        upstream_port=upstream_port,
        listeners=list(listeners),
        wasm_path=str(Path(wasm_path).resolve()),
        plugin_name=plugin_name,
        root_id=root_id,
        vm_id=vm_id,
        case_header=CASE_HEADER,
        begin_marker=BEGIN_MARKER,
        end_marker=END_MARKER,
    )
