"""In-process proxy-wasm host on wasmtime that behaves like Envoy (ABI 0.2.1, 0.2.0, 0.1.0).

Public entry points:

* ``run_spec(spec, wasm, default_config=..., root_id=...) -> HostRun`` and ``observe_spec(...)``
  (just the per-case ``Observation`` list) for the spec runner;
* ``PluginHost`` / ``HttpStream`` to drive a filter callback by callback, like the Go SDK's proxytest.
"""

from .plugin import HttpStream, PluginFailed, PluginHost, local_reply_headers
from .runner import HostRun, observe_spec, request_headers, run_spec
from .state import Action, BufferType, HeaderMap, LocalResponse, MapType, WasmResult, parse_pairs, serialize_pairs
from .vm import GuestFailure, compiled_module

__all__ = [
    "Action", "BufferType", "GuestFailure", "HeaderMap", "HostRun", "HttpStream", "LocalResponse", "MapType",
    "PluginFailed", "PluginHost", "WasmResult", "compiled_module", "local_reply_headers", "observe_spec",
    "parse_pairs", "request_headers", "run_spec", "serialize_pairs",
]
