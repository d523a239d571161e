// Reference filter for filterkit's lifecycle checks: a minimal header filter on @solo-io/proxy-runtime
// 0.1.8 as its README shows. Adds response header "x-filter: solo-runtime" and request header
// "x-checked: solo-runtime".
export * from "@solo-io/proxy-runtime/proxy";

import {
  Context,
  FilterHeadersStatusValues,
  RootContext,
  registerRootContext,
  stream_context,
} from "@solo-io/proxy-runtime";

class HeaderRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new HeaderStream(context_id, this);
  }
}

class HeaderStream extends Context {
  constructor(context_id: u32, root_context: HeaderRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-checked", "solo-runtime");
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-filter", "solo-runtime");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new HeaderRoot(context_id), "solo-runtime");
