"""Values of ``proxy_get_property`` paths, encoded as Envoy encodes them (strings raw, integers as
8-byte little-endian, maps as serialised pairs). Unknown paths answer NotFound (None here)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .state import Context, MapType, RootContext, StreamContext, raw, serialize_pairs

if TYPE_CHECKING:
    from .plugin import PluginHost

DOWNSTREAM_ADDRESS = "127.0.0.1"
LISTENER_ADDRESS = "127.0.0.1:10000"


def _int(value: int) -> bytes:
    return struct.pack("<q", value)


def property_value(host: "PluginHost", ctx: Context, path: tuple[str, ...]) -> bytes | None:
    if not path:
        return None
    head, rest = path[0], path[1:]
    root = ctx if isinstance(ctx, RootContext) else ctx.root
    if head in ("plugin_root_id", "plugin_name", "plugin_vm_id") and not rest:
        value = {"plugin_root_id": root.name if root else host.root_id, "plugin_name": host.plugin_name,
                 "plugin_vm_id": host.vm_id}[head]
        return raw(value)
    if not isinstance(ctx, StreamContext):
        return None
    if head == "request":
        return _request(ctx, rest)
    if head == "response":
        return _response(ctx, rest)
    if head == "source" and len(rest) == 1:
        port = 40000 + ctx.id % 20000
        return {"address": raw(f"{DOWNSTREAM_ADDRESS}:{port}"), "port": _int(port)}.get(rest[0])
    if head == "destination" and len(rest) == 1:
        return {"address": raw(LISTENER_ADDRESS), "port": _int(10000)}.get(rest[0])
    if head == "connection" and len(rest) == 1:
        return {"id": struct.pack("<Q", ctx.id), "mtls": b"\0"}.get(rest[0])
    return None


def _request(ctx: StreamContext, rest: tuple[str, ...]) -> bytes | None:
    hmap = ctx.maps.get(MapType.REQUEST_HEADERS)
    if hmap is None or not rest:
        return None
    key = rest[0]
    if key == "headers":
        if len(rest) == 2:
            value = hmap.get(rest[1])
            return None if value is None else raw(value)
        return serialize_pairs(hmap.pairs) if len(rest) == 1 else None
    if len(rest) != 1:
        return None
    path = hmap.get(":path") or ""
    simple = {
        "path": path, "url_path": path.split("?", 1)[0], "host": hmap.get(":authority"),
        "scheme": hmap.get(":scheme"), "method": hmap.get(":method"), "id": hmap.get("x-request-id"),
        "useragent": hmap.get("user-agent"), "referer": hmap.get("referer"), "protocol": "HTTP/1.1",
        "query": path.split("?", 1)[1] if "?" in path else "",
    }
    if key in simple:
        value = simple[key]
        return None if value is None else raw(value)
    return None


def _response(ctx: StreamContext, rest: tuple[str, ...]) -> bytes | None:
    hmap = ctx.maps.get(MapType.RESPONSE_HEADERS)
    if hmap is None or not rest:
        return None
    if rest[0] == "headers":
        if len(rest) == 2:
            value = hmap.get(rest[1])
            return None if value is None else raw(value)
        return serialize_pairs(hmap.pairs) if len(rest) == 1 else None
    if rest == ("code",):
        try:
            return _int(int(hmap.get(":status") or ""))
        except ValueError:
            return None
    if rest == ("code_details",) and ctx.local_response is not None:
        return raw(ctx.local_response.details)
    return None
