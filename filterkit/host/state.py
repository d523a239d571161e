"""Host-side state the ABI functions read and change: contexts, header maps, buffers, shared data."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from ..verdict import LogRecord


class WasmResult(IntEnum):
    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    BAD_EXPRESSION = 5
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    RESULT_MISMATCH = 9
    INTERNAL_FAILURE = 10
    BROKEN_CONNECTION = 11
    UNIMPLEMENTED = 12


class MapType(IntEnum):
    REQUEST_HEADERS = 0
    REQUEST_TRAILERS = 1
    RESPONSE_HEADERS = 2
    RESPONSE_TRAILERS = 3
    GRPC_RECEIVE_INITIAL_METADATA = 4
    GRPC_RECEIVE_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class BufferType(IntEnum):
    HTTP_REQUEST_BODY = 0
    HTTP_RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_RECEIVE_BUFFER = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7


class Action(IntEnum):
    """FilterHeadersStatus / FilterDataStatus values a stream callback returns."""

    CONTINUE = 0
    STOP_ITERATION = 1  # headers: StopIteration; body: StopIterationAndBuffer
    STOP_ALL_ITERATION_AND_BUFFER = 3  # headers only (body: StopIterationAndWatermark = 2)
    STOP_ALL_ITERATION_AND_WATERMARK = 4

    @classmethod
    def of(cls, value: int | None) -> "Action | int":
        if value is None:
            return cls.CONTINUE
        try:
            return cls(value)
        except ValueError:
            return value


LOG_LEVEL_NAMES = ("trace", "debug", "info", "warn", "error", "critical")
WASI_STDOUT_LEVEL = 2  # Envoy logs WASI stdout at info
WASI_STDERR_LEVEL = 4  # and stderr at error

Pairs = list[tuple[str, str]]


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def raw(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def serialize_pairs(pairs: Pairs) -> bytes:
    """Envoy's wire form: u32 count, (u32 key len, u32 value len) per pair, then key\\0value\\0 per pair."""
    encoded = [(raw(k), raw(v)) for k, v in pairs]
    out = [struct.pack("<I", len(encoded))]
    out += [struct.pack("<II", len(k), len(v)) for k, v in encoded]
    for k, v in encoded:
        out += [k, b"\0", v, b"\0"]
    return b"".join(out)


def parse_pairs(data: bytes) -> Pairs:
    """The inverse of ``serialize_pairs``; tolerant like Envoy's PairsUtil (stops at the first overrun)."""
    if len(data) < 4:
        return []
    (count,) = struct.unpack_from("<I", data, 0)
    pos = 4
    sizes = []
    for _ in range(count):
        if pos + 8 > len(data):
            return []
        sizes.append(struct.unpack_from("<II", data, pos))
        pos += 8
    pairs = []
    for key_len, value_len in sizes:
        if pos + key_len + 1 + value_len + 1 > len(data):
            return []
        key = data[pos:pos + key_len]
        pos += key_len + 1
        value = data[pos:pos + value_len]
        pos += value_len + 1
        pairs.append((text(key), text(value)))
    return pairs


class HeaderMap:
    """An ordered multi-map with Envoy's semantics (lower-case keys, first value wins on get)."""

    def __init__(self, pairs: Pairs = (), writable: bool = True):
        self.pairs: Pairs = [(k.lower(), v) for k, v in pairs]
        self.writable = writable

    def get(self, key: str) -> str | None:
        key = key.lower()
        for k, v in self.pairs:
            if k == key:
                return v
        return None

    def add(self, key: str, value: str) -> None:
        key = key.lower()
        if key.startswith(":"):  # pseudo headers stay in front, as in Envoy's header map
            index = sum(1 for k, _ in self.pairs if k.startswith(":"))
            self.pairs.insert(index, (key, value))
        else:
            self.pairs.append((key, value))

    def replace(self, key: str, value: str) -> None:
        key = key.lower()
        for i, (k, _) in enumerate(self.pairs):
            if k == key:
                self.pairs[i] = (key, value)
                self.pairs = self.pairs[:i + 1] + [(k2, v2) for k2, v2 in self.pairs[i + 1:] if k2 != key]
                return
        self.add(key, value)

    def remove(self, key: str) -> None:
        key = key.lower()
        self.pairs = [(k, v) for k, v in self.pairs if k != key]

    def set_all(self, pairs: Pairs) -> None:
        self.pairs = []
        for k, v in pairs:
            self.add(k, v)

    def byte_size(self) -> int:
        return sum(len(raw(k)) + len(raw(v)) for k, v in self.pairs)

    def copy(self) -> Pairs:
        return list(self.pairs)


class Buffer:
    def __init__(self, data: bytes = b"", writable: bool = True):
        self.data = bytearray(data)
        self.writable = writable

    def set_bytes(self, start: int, length: int, data: bytes) -> WasmResult:
        """Envoy's Buffer::copyFrom: prepend, replace all, or append; nothing in between."""
        if not self.writable:
            return WasmResult.BAD_ARGUMENT
        size = len(self.data)
        if start == 0:
            if length == 0:
                self.data[0:0] = data
                return WasmResult.OK
            if length >= size:
                self.data[:] = data
                return WasmResult.OK
            return WasmResult.BAD_ARGUMENT
        if start >= size:
            self.data += data
            return WasmResult.OK
        return WasmResult.BAD_ARGUMENT


@dataclass
class HttpCall:
    token: int
    context_id: int
    upstream: str
    headers: Pairs
    body: bytes
    trailers: Pairs
    timeout_ms: int


@dataclass
class LocalResponse:
    status: int
    details: str
    body: bytes
    headers: Pairs
    grpc_status: int


class Context:
    def __init__(self, context_id: int, root: "RootContext | None"):
        self.id = context_id
        self.root = root
        self.logs: list[LogRecord] = []
        self.properties: dict[tuple[str, ...], bytes] = {}  # proxy_set_property values (filter state)
        self.created = False
        self.deleted = False

    def header_map(self, kind: int) -> HeaderMap | None:
        return None

    def buffer(self, kind: int) -> Buffer | None:
        return None


class RootContext(Context):
    """The plugin: one per (VM, plugin configuration)."""

    def __init__(self, context_id: int, name: str, plugin_config: bytes, vm_config: bytes):
        super().__init__(context_id, None)
        self.name = name
        self.plugin_config = plugin_config
        self.vm_config = vm_config
        self.configuring = False  # plugin configuration is readable only inside proxy_on_configure
        self.tick_period_ms = 0
        self.done_called = False
        self.http_call_response: tuple[HeaderMap, Buffer, HeaderMap] | None = None

    def buffer(self, kind: int) -> Buffer | None:
        if kind == BufferType.VM_CONFIGURATION:
            return Buffer(self.vm_config, writable=False)
        if kind == BufferType.PLUGIN_CONFIGURATION and self.configuring:
            return Buffer(self.plugin_config, writable=False)
        if kind == BufferType.HTTP_CALL_RESPONSE_BODY and self.http_call_response:
            return self.http_call_response[1]
        return None

    def header_map(self, kind: int) -> HeaderMap | None:
        if self.http_call_response and kind == MapType.HTTP_CALL_RESPONSE_HEADERS:
            return self.http_call_response[0]
        if self.http_call_response and kind == MapType.HTTP_CALL_RESPONSE_TRAILERS:
            return self.http_call_response[2]
        return None


class StreamContext(Context):
    """One HTTP stream (request + response) as a filter instance sees it."""

    def __init__(self, context_id: int, root: RootContext):
        super().__init__(context_id, root)
        self.maps: dict[int, HeaderMap] = {}
        self.buffers: dict[int, Buffer] = {}
        self.local_response: LocalResponse | None = None
        self.local_reply_sent = False  # set by proxy_send_local_response during the current callback
        self.continue_requested = {0: False, 1: False}
        self.closed = False
        self.route_cache_cleared = 0
        self.http_call_response: tuple[HeaderMap, Buffer, HeaderMap] | None = None

    def header_map(self, kind: int) -> HeaderMap | None:
        if self.http_call_response and kind == MapType.HTTP_CALL_RESPONSE_HEADERS:
            return self.http_call_response[0]
        if self.http_call_response and kind == MapType.HTTP_CALL_RESPONSE_TRAILERS:
            return self.http_call_response[2]
        return self.maps.get(kind)

    def buffer(self, kind: int) -> Buffer | None:
        if kind == BufferType.HTTP_CALL_RESPONSE_BODY and self.http_call_response:
            return self.http_call_response[1]
        if kind in (BufferType.VM_CONFIGURATION, BufferType.PLUGIN_CONFIGURATION) and self.root:
            return self.root.buffer(kind)
        return self.buffers.get(kind)


@dataclass
class Metric:
    kind: int  # 0 counter, 1 gauge, 2 histogram
    name: str
    value: int = 0
    samples: list[int] = field(default_factory=list)


class SharedState:
    """What Envoy keeps per process rather than per VM: shared data, queues, metrics (they outlive VM restarts)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], tuple[bytes, int]] = {}  # (vm_id, key) -> (value, cas)
        self.next_cas = 1
        self.queues: dict[int, tuple[str, str, list[bytes]]] = {}  # token -> (vm_id, name, items)
        self.queue_tokens: dict[tuple[str, str], int] = {}
        self.queue_owner: dict[int, int] = {}  # token -> root context id to notify
        self.metrics: dict[int, Metric] = {}
        self.metric_ids: dict[tuple[int, str], int] = {}
