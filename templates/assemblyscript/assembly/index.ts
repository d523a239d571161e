// {{ name }}: a policy filter for Envoy (proxy-wasm, AssemblyScript).
//
// - rejects requests that match a deny rule with a local response (status, body and a header that
//   names the rule are configurable);
// - adds a request header the upstream sees and a response header the client sees;
// - logs: debug per request, info per denied request, warn/error for configuration problems.
// The plugin configuration is JSON (see README.md); an empty configuration means the defaults.

// The ABI functions Envoy calls: the SDK's, with the fixes in sdk-fixes.ts.
export * from "./sdk-fixes";

import {
  BufferTypeValues,
  Context,
  FilterHeadersStatusValues,
  GrpcStatusValues,
  Headers,
  LogLevelValues,
  RootContext,
  get_buffer_bytes,
  makeHeaderPair,
  send_local_response,
  stream_context,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import { log, registerRootContext } from "./sdk-fixes";
import { JsonParser, JsonValue, Kind } from "./json";

const FILTER_NAME = "{{ name }}";

// -------------------------------------------------------------------------------------------------
// configuration

/** One deny rule: every condition given must match (header, and/or path prefix). */
class Rule {
  name: string = "";
  header: string = "";       // request header name, lower case; "" = no header condition
  value: string = "";        // exact header value; only checked when hasValue
  hasValue: bool = false;
  pathPrefix: string = "";   // prefix of the path without its query string; "" = no path condition

  matches(path: string, values: Headers): bool {
    if (this.pathPrefix.length > 0 && !path.startsWith(this.pathPrefix)) return false;
    if (this.header.length > 0) {
      let found = false;
      for (let i = 0; i < values.length && !found; i++) {
        if (String.UTF8.decode(values[i].key).toLowerCase() != this.header) continue;
        found = !this.hasValue || String.UTF8.decode(values[i].value) == this.value;
      }
      if (!found) return false;
    }
    return true;
  }
}

class Config {
  rules: Rule[] = [];
  headerRules: bool = false; // some rule looks at a request header
  denyStatus: u32 = 403;
  denyBody: string = "request denied\n";
  ruleHeader: string = "x-policy-rule"; // response header naming the matched rule; "" = none
  requestHeaderName: string = "x-policy-checked";
  requestHeaderValue: string = FILTER_NAME;
  responseHeaderName: string = "x-filter";
  responseHeaderValue: string = FILTER_NAME;
}

const TOP_KEYS = ["deny", "deny_status", "deny_body", "rule_header", "request_header", "response_header"];
const RULE_KEYS = ["name", "header", "value", "path_prefix"];
const HEADER_KEYS = ["name", "value"];

/** Collects the problems of one configuration text. */
class ConfigReader {
  errors: string[] = [];

  warnUnknownKeys(obj: JsonValue, allowed: string[], where: string): void {
    for (let i = 0; i < obj.keys.length; i++) {
      if (!allowed.includes(obj.keys[i])) {
        log(LogLevelValues.warn, "configuration: ignoring unknown key '" + obj.keys[i] + "' in " + where +
          " (known: " + allowed.join(", ") + ")");
      }
    }
  }

  str(obj: JsonValue, key: string, where: string, fallback: string): string {
    const v = obj.get(key);
    if (v === null) return fallback;
    if (v.kind != Kind.String) {
      this.errors.push(where + "." + key + " must be a string, not " + v.kindName());
      return fallback;
    }
    return v.str;
  }

  header(obj: JsonValue, key: string, config: Config, isRequest: bool): void {
    const v = obj.get(key);
    if (v === null) return;
    let name = "";
    let value = "";
    if (v.kind == Kind.Null) {
      // null switches the header off
    } else if (v.kind != Kind.Object) {
      this.errors.push(key + " must be an object like {\"name\": \"x-example\", \"value\": \"1\"} or null, not " + v.kindName());
      return;
    } else {
      this.warnUnknownKeys(v, HEADER_KEYS, key);
      name = this.str(v, "name", key, "").toLowerCase();
      value = this.str(v, "value", key, FILTER_NAME);
      if (name.length == 0) this.errors.push(key + ".name is missing (use \"" + key + "\": null to add no header)");
    }
    if (isRequest) {
      config.requestHeaderName = name;
      config.requestHeaderValue = value;
    } else {
      config.responseHeaderName = name;
      config.responseHeaderValue = value;
    }
  }

  rule(v: JsonValue, index: i32): Rule | null {
    const where = "deny[" + index.toString() + "]";
    if (v.kind != Kind.Object) {
      this.errors.push(where + " must be an object like {\"header\": \"x-block\", \"value\": \"1\"} or {\"path_prefix\": \"/admin\"}, not " + v.kindName());
      return null;
    }
    this.warnUnknownKeys(v, RULE_KEYS, where);
    const rule = new Rule();
    rule.header = this.str(v, "header", where, "").toLowerCase();
    rule.hasValue = v.get("value") !== null;
    rule.value = this.str(v, "value", where, "");
    rule.pathPrefix = this.str(v, "path_prefix", where, "");
    if (rule.header.length == 0 && rule.pathPrefix.length == 0) {
      this.errors.push(where + " needs \"header\" and/or \"path_prefix\"");
      return null;
    }
    if (rule.hasValue && rule.header.length == 0) {
      this.errors.push(where + " has a \"value\" but no \"header\"");
    }
    let name = this.str(v, "name", where, "");
    if (name.length == 0) {
      name = rule.header.length > 0 ? "header:" + rule.header + (rule.hasValue ? "=" + rule.value : "") : "";
      if (rule.pathPrefix.length > 0) name += (name.length > 0 ? "," : "") + "path:" + rule.pathPrefix;
    }
    rule.name = name;
    return rule;
  }

  read(text: string): Config | null {
    const config = new Config();
    if (text.trim().length == 0) return config; // empty configuration: the defaults
    const parser = new JsonParser(text);
    const top = parser.parse();
    if (top === null) {
      this.errors.push("not valid JSON: " + parser.error);
      return null;
    }
    if (top.kind != Kind.Object) {
      this.errors.push("must be a JSON object, not " + top.kindName());
      return null;
    }
    this.warnUnknownKeys(top, TOP_KEYS, "the configuration");
    const deny = top.get("deny");
    if (deny !== null && deny.kind != Kind.Null) {
      if (deny.kind != Kind.Array) {
        this.errors.push("deny must be a list of rules, not " + deny.kindName());
      } else {
        for (let i = 0; i < deny.items.length; i++) {
          const rule = this.rule(deny.items[i], i);
          if (rule === null) continue;
          config.rules.push(rule);
          if (rule.header.length > 0) config.headerRules = true;
        }
      }
    }
    const status = top.get("deny_status");
    if (status !== null) {
      if (status.kind != Kind.Number || status.num != Math.floor(status.num) || status.num < 200 || status.num > 599) {
        this.errors.push("deny_status must be a whole number from 200 to 599");
      } else {
        config.denyStatus = <u32>status.num;
      }
    }
    config.denyBody = this.str(top, "deny_body", "the configuration", config.denyBody);
    config.ruleHeader = this.str(top, "rule_header", "the configuration", config.ruleHeader).toLowerCase();
    this.header(top, "request_header", config, true);
    this.header(top, "response_header", config, false);
    return this.errors.length == 0 ? config : null;
  }
}

// -------------------------------------------------------------------------------------------------
// the filter

class PolicyRoot extends RootContext {
  config: Config = new Config();

  createContext(context_id: u32): Context {
    return new PolicyStream(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    // Always re-read: the SDK's own onConfigure keeps the previous configuration when the new one
    // is empty; here an empty configuration means the defaults.
    const text = configuration_size == 0 ? "" :
      String.UTF8.decode(get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size));
    const reader = new ConfigReader();
    const config = reader.read(text);
    if (config === null) {
      log(LogLevelValues.error, "configuration refused: " + reader.errors.join("; "));
      return false; // Envoy rejects the configuration; a running filter keeps its previous one
    }
    this.config = config;
    log(LogLevelValues.info, "configured: " + config.rules.length.toString() + " deny rule(s)" +
      (text.trim().length == 0 ? " (empty configuration, defaults)" : ""));
    return true;
  }
}

class PolicyStream extends Context {
  config: Config;

  constructor(context_id: u32, root: PolicyRoot) {
    super(context_id, root);
    this.config = root.config; // a stream keeps the configuration it started with
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const request = stream_context.headers.request;
    const method = request.get(":method");
    const fullPath = request.get(":path");
    const query = fullPath.indexOf("?");
    const path = query >= 0 ? fullPath.substring(0, query) : fullPath;
    const all: Headers = this.config.headerRules ? request.get_headers() : [];
    const rules = this.config.rules;
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i];
      if (!rule.matches(path, all)) continue;
      log(LogLevelValues.info, "denied " + method + " " + path + ": rule '" + rule.name + "' -> " +
        this.config.denyStatus.toString());
      const extra: Headers = [];
      if (this.config.ruleHeader.length > 0) extra.push(makeHeaderPair(this.config.ruleHeader, rule.name));
      send_local_response(this.config.denyStatus, "policy_denied", String.UTF8.encode(this.config.denyBody),
        extra, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    log(LogLevelValues.debug, "allowed " + method + " " + path);
    if (this.config.requestHeaderName.length > 0) {
      // Replace, so a client cannot send its own value to the upstream.
      request.remove(this.config.requestHeaderName);
      request.add(this.config.requestHeaderName, this.config.requestHeaderValue);
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (this.config.responseHeaderName.length > 0) {
      stream_context.headers.response.remove(this.config.responseHeaderName);
      stream_context.headers.response.add(this.config.responseHeaderName, this.config.responseHeaderValue);
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new PolicyRoot(context_id), "{{ root_id }}");
