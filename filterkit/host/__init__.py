"""In-process proxy-wasm host on wasmtime that behaves like Envoy (ABI 0.2.1, 0.2.0, 0.1.0).

Public entry points:

* ``run_spec(spec, wasm, default_config=..., root_id=...) -> HostRun`` and ``observe_spec(...)``
  (just the per-case ``Observation`` list) for the spec runner;
* ``PluginHost`` / ``HttpStream`` / ``TcpConnection`` to drive a filter callback by callback, like the
  Go SDK's proxytest (see :mod:`filterkit.host.plugin`); ``HttpCallAnswer`` scripts http call answers,
  ``VirtualClock`` is the time the filter sees;
* the pytest plugin :mod:`filterkit.pytest_plugin` (fixtures ``filterkit_host``, ``filterkit_wasm``).
"""

from .plugin import HttpStream, PluginFailed, PluginHost, StreamPaused, TcpConnection, local_reply_headers
from .properties import Typed
from .runner import HostRun, observe_spec, request_headers, run_spec
from .state import (
    Action, BufferType, GrpcCall, HeaderMap, HttpCall, HttpCallAnswer, LocalResponse, MapType, MetricType, PeerType,
    SharedState, StreamType, VirtualClock, WasmResult, parse_pairs, serialize_pairs,
)
from .vm import GuestFailure, compiled_module

__all__ = [
    "Action", "BufferType", "GrpcCall", "GuestFailure", "HeaderMap", "HostRun", "HttpCall", "HttpCallAnswer",
    "HttpStream", "LocalResponse", "MapType", "MetricType", "PeerType", "PluginFailed", "PluginHost", "SharedState",
    "StreamPaused", "StreamType", "TcpConnection", "Typed", "VirtualClock", "WasmResult", "compiled_module",
    "local_reply_headers", "observe_spec", "parse_pairs", "request_headers", "run_spec", "serialize_pairs",
]
