// Reference filter for filterkit's lifecycle checks: a minimal header filter on the plain gcore SDK
// (its own ABI exports, its own `log`, no sdk-fixes.ts). Adds response header "x-filter: gcore-unfixed"
// and request header "x-checked: gcore-unfixed".
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";

import {
  Context,
  FilterHeadersStatusValues,
  LogLevelValues,
  RootContext,
  log,
  registerRootContext,
  stream_context,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";

class HeaderRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new HeaderStream(context_id, this);
  }
}

class HeaderStream extends Context {
  constructor(context_id: u32, root: HeaderRoot) {
    super(context_id, root);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-checked", "gcore-unfixed");
    log(LogLevelValues.debug, "request");
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-filter", "gcore-unfixed");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new HeaderRoot(context_id), "gcore-unfixed");
