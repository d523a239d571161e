// Small, local fixes for known defects of @gcoredev/proxy-wasm-sdk-as 1.2.3 (on AssemblyScript 0.28).
//
// index.ts re-exports this module instead of "@gcoredev/proxy-wasm-sdk-as/assembly/proxy", so the
// ABI functions Envoy calls come from here: most are the SDK's own, re-exported unchanged; the ones
// below marked FIX replace SDK functions. Each FIX says which defect it works around and when it
// can be removed. To drop all of them once the SDK is fixed: in index.ts replace
// `export * from "./sdk-fixes"` by `export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy"`, use
// the SDK's `registerRootContext` and `log`.

import {
  Context,
  LogLevelValues,
  RootContext,
  registerRootContext as sdkRegisterRootContext,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import * as sdk from "@gcoredev/proxy-wasm-sdk-as/assembly/exports";
import { proxy_log } from "@gcoredev/proxy-wasm-sdk-as/assembly/imports";

// ABI functions the SDK gets right, re-exported unchanged.
export { malloc } from "@gcoredev/proxy-wasm-sdk-as/assembly/malloc";
export {
  proxy_abi_version_0_2_1,
  proxy_on_foreign_function,
  proxy_on_request_headers,
  proxy_on_request_body,
  proxy_on_request_trailers,
  proxy_on_request_metadata,
  proxy_on_response_headers,
  proxy_on_response_body,
  proxy_on_response_trailers,
  proxy_on_response_metadata,
  proxy_on_downstream_data,
  proxy_on_upstream_data,
  proxy_on_downstream_connection_close,
  proxy_on_upstream_connection_close,
  proxy_on_new_connection,
  proxy_on_log,
  proxy_on_grpc_receive_initial_metadata,
  proxy_on_grpc_trailing_metadata,
  proxy_on_grpc_receive,
  proxy_on_grpc_close,
} from "@gcoredev/proxy-wasm-sdk-as/assembly/exports";

// -------------------------------------------------------------------------------------------------
// FIX 1: log levels.
// SDK defect: its `log()` writes "[LEVEL]: message" to WASI stdout (a FastEdge workaround), so Envoy
// logs every message at info level and `--component-log-level wasm:...` cannot filter them.
// This `log` calls the proxy-wasm `proxy_log` host function with the real level.
// Remove when the SDK's `log()` calls `proxy_log` again.
export function log(level: LogLevelValues, message: string): void {
  const utf8 = String.UTF8.encode(message);
  proxy_log(level as usize, changetype<usize>(utf8), utf8.byteLength);
}

// -------------------------------------------------------------------------------------------------
// FIX 2: one RootContext object per root context id (per plugin configuration).
// SDK defects:
//   a) `proxy_on_done` / `proxy_on_delete` look the id up only in the map of stream contexts. Envoy
//      calls both for the root context too, so the module traps ("Key does not exist in
//      ~lib/map.ts") at every shutdown, and when a listener with an old plugin configuration is
//      drained after a configuration change. That trap marks the shared VM as failed, and every
//      request on the new configuration is answered 503 until Envoy restarts.
//   b) The SDK keeps a single RootContext per VM and hands it every root context id. Envoy shares a
//      VM between all plugin configurations with the same vm_id and code, so a second configuration
//      (a configuration change, or a second listener) overwrote the first one's state.
// Here every root context id gets its own object from the factory given to `registerRootContext`,
// root-level calls are routed by id, and done/delete know root ids from stream ids. Stream contexts
// stay in the SDK's map; the SDK creates them through `RootRouter`, which asks the right root.
// Remove when the SDK keeps root contexts by id and its `proxy_on_done`/`proxy_on_delete` handle
// root context ids.

const roots = new Map<u32, RootContext>();
let rootFactory: ((context_id: u32) => RootContext) | null = null;
let creatingFor: u32 = 0; // root id of the stream context being created

class RootRouter extends RootContext {
  createContext(context_id: u32): Context {
    if (!roots.has(creatingFor)) {
      log(LogLevelValues.error, "stream " + context_id.toString() + " for unknown root context " + creatingFor.toString());
      return new Context(context_id, this); // passes everything through unchanged
    }
    return roots.get(creatingFor).createContext(context_id);
  }
}

/** Use this instead of the SDK's registerRootContext (same arguments). */
export function registerRootContext(factory: (context_id: u32) => RootContext, name: string): void {
  rootFactory = factory;
  sdkRegisterRootContext((context_id: u32): RootContext => new RootRouter(context_id), name);
}

function root(id: u32): RootContext {
  if (!roots.has(id)) {
    // Not expected from a conforming host; create it rather than trap.
    proxy_on_context_create(id, 0);
  }
  return roots.get(id);
}

export function proxy_on_context_create(context_id: u32, root_context_id: u32): void {
  if (root_context_id == 0) {
    if (!roots.has(context_id)) {
      const factory = rootFactory;
      if (factory === null) {
        log(LogLevelValues.critical, "no root context registered: call registerRootContext() in index.ts");
        unreachable();
      }
      const context = factory!(context_id);
      context.context_id = context_id;
      roots.set(context_id, context);
    }
    return;
  }
  creatingFor = root_context_id;
  sdk.proxy_on_context_create(context_id, root_context_id);
}

export function proxy_on_vm_start(root_context_id: u32, vm_configuration_size: u32): u32 {
  return root(root_context_id).onStart(vm_configuration_size) ? 1 : 0;
}

export function proxy_validate_configuration(root_context_id: u32, configuration_size: u32): u32 {
  return root(root_context_id).validateConfiguration(configuration_size) ? 1 : 0;
}

export function proxy_on_configure(root_context_id: u32, configuration_size: u32): u32 {
  return root(root_context_id).onConfigure(configuration_size) ? 1 : 0;
}

export function proxy_on_tick(root_context_id: u32): void {
  root(root_context_id).onTick();
}

export function proxy_on_queue_ready(root_context_id: u32, token: u32): void {
  root(root_context_id).onQueueReady(token);
}

export function proxy_on_http_call_response(context_id: u32, token: u32, headers: u32, body_size: u32, trailers: u32): void {
  root(context_id).onHttpCallResponse(token, headers, body_size, trailers);
}

export function proxy_on_done(context_id: u32): u32 {
  if (roots.has(context_id)) {
    return roots.get(context_id).onDone() ? 1 : 0;
  }
  return sdk.proxy_on_done(context_id);
}

export function proxy_on_delete(context_id: u32): void {
  if (roots.has(context_id)) {
    roots.get(context_id).onDelete();
    roots.delete(context_id);
    return;
  }
  sdk.proxy_on_delete(context_id);
}
