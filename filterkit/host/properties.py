"""``proxy_get_property``: Envoy's attributes, computed from the host's state and encoded as Envoy
encodes them (``serializeValue`` in Envoy's wasm context.cc):

- string, bytes: the raw bytes; int64 / uint64 / double: 8 bytes little-endian; bool: 1 byte;
- timestamp (``request.time``): int64 nanoseconds since the epoch; duration (``request.duration``): int64 ns;
- map (``request.headers``, …): serialized pairs (the header-map wire form), values encoded as above;
- list: serialized pairs with the elements as keys and empty values;
- protobuf message (``xds.node``, ``metadata``, …): the serialized message.

Path lookup is Envoy's: the first segment names a top-level attribute, later segments index into
maps (by key), messages (by field name) and lists (by decimal index). Unknown paths: NotFound.

Attributes (where the value comes from on this host):

=============================  ====================================================================
``request.*``                  path url_path host scheme method headers referer useragent time id
                               protocol query duration (only in proxy_on_log) size total_size
``response.*``                 code code_details flags grpc_status headers trailers size total_size
``connection.*``               id mtls requested_server_name ; ``connection_id``
``source.*`` ``destination.*`` address port (downstream peer / listener)
``upstream.*``                 address port local_address transport_failure_reason
                               request_attempt_count (once the request went upstream)
``xds.*``                      node cluster_name cluster_metadata route_name route_metadata
                               virtual_host_name virtual_host_metadata upstream_host_metadata
                               filter_chain_name listener_metadata listener_direction
``metadata`` ``filter_state``  dynamic metadata (empty message) / filter state by key
``plugin_*``                   plugin_name plugin_root_id plugin_vm_id
``<name>``                     a value the filter set with proxy_set_property(name)
=============================  ====================================================================

Every path can be set (or hidden, with ``None``) by the test: ``PluginHost(properties=…)`` for all
streams, ``host.http_stream(properties=…)`` for one. Defaults mirror filterkit's Envoy test setup
(listener 127.0.0.1, cluster ``upstream``, virtual host ``all``, unnamed route).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from ..spec import TypedValue
from .state import (
    BufferType, Context, HeaderMap, MapType, RootContext, StreamContext, TcpContext, raw, serialize_pairs,
)

if TYPE_CHECKING:
    from .plugin import PluginHost

DOWNSTREAM_ADDRESS = "127.0.0.1"
LISTENER_ADDRESS = "127.0.0.1"
LISTENER_PORT = 10000
UPSTREAM_ADDRESS = "127.0.0.1"
UPSTREAM_PORT = 8080
CLUSTER_NAME = "upstream"
VIRTUAL_HOST_NAME = "all"

_MISSING = object()


# A property value with an explicit CEL type: ``Typed("uint64", 5)``, ``Typed("timestamp", ns)``,
# ``Typed("duration", ns)``, ``Typed("double", 1.5)``, ``Typed("bytes", b"...")``, ``Typed("message", b"...")``.
Typed = TypedValue


class Message:
    """A protobuf message value: its serialized bytes and its fields by name (for deeper paths)."""

    __slots__ = ("data", "fields")

    def __init__(self, data: bytes, fields: dict[str, Any] | None = None):
        self.data = data
        self.fields = fields or {}


def encode(value: Any) -> bytes | None:
    """A Python value as Envoy serializes the CEL value it stands for."""
    if value is None:
        return None
    if isinstance(value, Typed):
        kind, v = value.type, value.value
        if kind in ("int64", "timestamp", "duration"):
            return struct.pack("<q", int(v))
        if kind == "uint64":
            return struct.pack("<Q", int(v) & 0xFFFFFFFFFFFFFFFF)
        if kind == "double":
            return struct.pack("<d", float(v))
        if kind == "bool":
            return b"\x01" if v else b"\x00"
        if kind in ("bytes", "message"):
            return raw(v) if isinstance(v, str) else bytes(v)
        if kind == "string":
            return raw(str(v))
        raise ValueError(f"unknown property type {kind!r}")
    if isinstance(value, Message):
        return value.data
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return struct.pack("<q", value)
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, str):
        return raw(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, HeaderMap):
        return serialize_pairs(value.pairs)
    if isinstance(value, dict):
        return serialize_pairs([(encode(k) or b"", encode(v) or b"") for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return serialize_pairs([(encode(v) or b"", b"") for v in value])
    raise TypeError(f"cannot encode a property value of type {type(value).__name__}")


def _index(value: Any, key: str) -> Any:
    """One path step into a computed value (map key, message field, list index)."""
    if isinstance(value, HeaderMap):
        values = value.get_all(key)
        return ",".join(values) if values else _MISSING
    if isinstance(value, Message):
        return value.fields.get(key, _MISSING)
    if isinstance(value, dict):
        return value.get(key, _MISSING)
    if isinstance(value, (list, tuple)):
        try:
            i = int(key)
        except ValueError:
            return _MISSING
        return value[i] if 0 <= i < len(value) else _MISSING
    if isinstance(value, Lazy):
        return value.get(key)
    return _MISSING


class Lazy:
    """A map whose entries are computed on lookup (request, response, …)."""

    __slots__ = ("getters",)

    def __init__(self, getters: dict[str, Any]):
        self.getters = getters

    def get(self, key: str) -> Any:
        getter = self.getters.get(key)
        if getter is None:
            return _MISSING
        value = getter() if callable(getter) else getter
        return _MISSING if value is None else value


def property_value(host: "PluginHost", ctx: Context, path: tuple[str, ...]) -> bytes | None:
    """The encoded value of ``path`` for ``ctx``, or None (NotFound)."""
    if not path:
        return None
    value = _override(host, ctx, path)
    if value is _MISSING:
        value = _lookup(host, ctx, path)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, Lazy):
        return None  # a whole wrapper map: Envoy serializes only real maps; treat as not found
    return encode(value)


def _override(host: "PluginHost", ctx: Context, path: tuple[str, ...]) -> Any:
    for overrides in (ctx.properties, ctx.root.properties if ctx.root is not None else {}, host.properties):
        if not overrides:
            continue
        if path in overrides:
            return overrides[path]
        for n in range(len(path) - 1, 0, -1):
            value = overrides.get(path[:n], _MISSING)
            if value is _MISSING:
                continue
            for key in path[n:]:
                value = _index(value, key)
                if value is _MISSING:
                    return None  # under an overridden value: not found
            return value
    return _MISSING


def _lookup(host: "PluginHost", ctx: Context, path: tuple[str, ...]) -> Any:
    value = _top(host, ctx, path[0])
    for key in path[1:]:
        if value is _MISSING or value is None:
            return _MISSING
        value = _index(value, key)
    return value


def _top(host: "PluginHost", ctx: Context, name: str) -> Any:
    root = ctx if isinstance(ctx, RootContext) else ctx.root
    if name == "plugin_root_id":
        return root.name if root is not None else host.root_id
    if name == "plugin_vm_id":
        return host.vm_id
    if name == "plugin_name":
        return host.plugin_name if root is not None else _MISSING
    if name == "xds":
        return _xds(host, ctx)
    stream = ctx if isinstance(ctx, (StreamContext, TcpContext)) else None
    if stream is None:
        return _MISSING
    info = stream.info
    if name == "connection_id":
        return Typed("uint64", info.connection_id)
    if name == "request":
        return _request(host, stream)
    if name == "response":
        return _response(stream)
    if name == "connection":
        return Lazy({"id": Typed("uint64", info.connection_id), "mtls": False, "requested_server_name": ""})
    if name == "source":
        return Lazy({"address": f"{DOWNSTREAM_ADDRESS}:{info.source_port}", "port": info.source_port})
    if name == "destination":
        return Lazy({"address": f"{LISTENER_ADDRESS}:{host.listener_port}", "port": host.listener_port})
    if name == "upstream":
        return _upstream(host, stream)
    if name == "metadata":
        return Message(b"")
    if name == "filter_state":
        return {f"wasm.{k}": Typed("bytes", v) for k, v in stream.filter_state.items()}
    if name in stream.filter_state:  # proxy_set_property (a CelState of type bytes)
        return Typed("bytes", stream.filter_state[name])
    return _MISSING


def _maps(stream: StreamContext) -> dict[int, HeaderMap]:
    """The header maps Envoy's activation sees: the live ones, or in proxy_on_log the access-log ones."""
    if stream.log_maps is not None:
        return stream.log_maps
    return stream.maps


def _request(host: "PluginHost", stream) -> Lazy:
    info = stream.info
    hmap = _maps(stream).get(MapType.REQUEST_HEADERS) if isinstance(stream, StreamContext) else None

    def header(name: str):
        return (lambda: hmap.get(name)) if hmap is not None else None

    def path_parts():
        return (hmap.get(":path") or "") if hmap is not None else None

    def url_path():
        path = path_parts()
        return None if path is None else path.split("?", 1)[0]

    def query():
        path = path_parts()
        if path is None:
            return None
        return path.split("?", 1)[1].split("#", 1)[0] if "?" in path else ""

    def size():
        if hmap is not None and hmap.get("content-length") is not None:
            try:
                return int(hmap.get("content-length"))
            except ValueError:
                return None
        return info.bytes_received

    return Lazy({
        "headers": hmap if hmap is not None else HeaderMap(),
        "time": Typed("timestamp", info.start_ns),
        "size": size,
        "total_size": lambda: info.bytes_received + (hmap.byte_size() if hmap is not None else 0),
        "duration": (lambda: Typed("duration", info.end_ns - info.start_ns)) if info.end_ns is not None else None,
        "protocol": "HTTP/1.1" if isinstance(stream, StreamContext) else None,
        "path": header(":path"), "url_path": url_path if hmap is not None else None,
        "host": header(":authority"), "scheme": header(":scheme"), "method": header(":method"),
        "referer": header("referer"), "id": header("x-request-id"), "useragent": header("user-agent"),
        "query": query if hmap is not None else None,
    })


def _response(stream) -> Lazy:
    info = stream.info
    maps = _maps(stream) if isinstance(stream, StreamContext) else {}
    headers = maps.get(MapType.RESPONSE_HEADERS)
    trailers = maps.get(MapType.RESPONSE_TRAILERS)

    def grpc_status():
        for source in (trailers, headers):
            if source is not None and source.get("grpc-status") is not None:
                try:
                    return int(source.get("grpc-status"))
                except ValueError:
                    return None
        return None

    return Lazy({
        "code": info.response_code,
        "code_details": info.response_code_details,
        "flags": info.response_flags,
        "grpc_status": grpc_status,
        "headers": headers if headers is not None else HeaderMap(),
        "trailers": trailers if trailers is not None else HeaderMap(),
        "size": info.bytes_sent,
        "total_size": lambda: info.bytes_sent + (headers.byte_size() if headers is not None else 0) + (
            trailers.byte_size() if trailers is not None else 0),
    })


def _upstream(host: "PluginHost", stream) -> Lazy:
    info = stream.info
    if not info.upstream_called:
        return Lazy({"request_attempt_count": Typed("uint64", 0)})
    return Lazy({
        "address": f"{UPSTREAM_ADDRESS}:{host.upstream_port}", "port": host.upstream_port,
        "local_address": f"{UPSTREAM_ADDRESS}:{40000 + info.connection_id % 20000}",
        "transport_failure_reason": "", "request_attempt_count": Typed("uint64", 1),
    })


def _xds(host: "PluginHost", ctx: Context) -> Lazy:
    stream = isinstance(ctx, (StreamContext, TcpContext))
    http = isinstance(ctx, StreamContext)
    return Lazy({
        "node": lambda: node_message(host.node),
        "cluster_name": CLUSTER_NAME if stream else None,
        "cluster_metadata": Message(b"") if stream else None,
        "route_name": "" if http else None,
        "route_metadata": Message(b"") if http else None,
        "virtual_host_name": VIRTUAL_HOST_NAME if http else None,
        "virtual_host_metadata": Message(b"") if http else None,
        "upstream_host_metadata": (Message(b"") if ctx.info.upstream_called else None) if stream else None,
        "filter_chain_name": "" if stream else None,
        "listener_metadata": Message(b"") if stream else None,
        "listener_direction": 0 if stream else None,
    })


# -- a minimal protobuf encoder for envoy.config.core.v3.Node and google.protobuf.Struct ----------


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= 0xFFFFFFFFFFFFFFFF
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _pb_value(value: Any) -> bytes:
    """google.protobuf.Value."""
    if value is None:
        return _field(1, 0, _varint(0))
    if isinstance(value, bool):
        return _field(4, 0, _varint(int(value)))
    if isinstance(value, (int, float)):
        return _field(2, 1, struct.pack("<d", float(value)))
    if isinstance(value, str):
        return _field(3, 2, raw(value))
    if isinstance(value, dict):
        return _field(5, 2, _pb_struct(value))
    if isinstance(value, (list, tuple)):
        return _field(6, 2, b"".join(_field(1, 2, _pb_value(v)) for v in value))
    return _field(3, 2, raw(str(value)))


def _pb_struct(value: dict) -> bytes:
    return b"".join(_field(1, 2, _field(1, 2, raw(str(k))) + _field(2, 2, _pb_value(v))) for k, v in value.items())


def _struct_cel(value: Any) -> Any:
    """How CEL sees a Struct/Value: numbers are doubles, the rest as in JSON."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _struct_cel(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_struct_cel(v) for v in value]
    return value


def node_message(node: dict[str, Any]) -> Message:
    """``xds.node``: Node{id=1, cluster=2, metadata=3 (Struct), user_agent_name=6}."""
    node_id, cluster = str(node.get("id", "")), str(node.get("cluster", ""))
    metadata = node.get("metadata") or {}
    agent = str(node.get("user_agent_name", "envoy"))
    data = b""
    if node_id:
        data += _field(1, 2, raw(node_id))
    if cluster:
        data += _field(2, 2, raw(cluster))
    if metadata:
        data += _field(3, 2, _pb_struct(metadata))
    if agent:
        data += _field(6, 2, raw(agent))
    fields = {"id": node_id, "cluster": cluster, "user_agent_name": agent,
              "metadata": _struct_cel(metadata)}
    return Message(data, fields)


def normalize_path(path: Any) -> tuple[str, ...]:
    """``"request.headers.x-id"`` or ``("request", "headers", "x-id")`` -> a path tuple."""
    if isinstance(path, (tuple, list)):
        return tuple(str(p) for p in path)
    return tuple(str(path).split("."))


def normalize(properties: dict | None) -> dict[tuple[str, ...], Any]:
    return {normalize_path(k): v for k, v in (properties or {}).items()}


__all__ = ["Message", "Typed", "encode", "node_message", "normalize", "normalize_path", "property_value",
           "BufferType"]
