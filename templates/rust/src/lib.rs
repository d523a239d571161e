//! {{ name }}: a policy filter for Envoy (proxy-wasm, Rust).
//!
//! - rejects requests that match a deny rule with a local response (status, body and a header that
//!   names the rule are configurable);
//! - adds a request header the upstream sees and a response header the client sees;
//! - logs: debug per request, info per denied request, warn/error for configuration problems.
//!
//! The plugin configuration is JSON (see README.md); an empty configuration means the defaults.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::{Map, Value};

const FILTER_NAME: &str = "{{ name }}";

proxy_wasm::main!({
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(PolicyRoot { config: Rc::new(Config::default()) })
    });
});

fn log(level: LogLevel, message: &str) {
    // Logging never fails the request: a host that refuses a log line is not worth a trap.
    let _ = hostcalls::log(level, message);
}

// -------------------------------------------------------------------------------------------------
// configuration

/// One deny rule: every condition given must match (header, and/or path prefix).
#[derive(Debug, Default)]
struct Rule {
    name: String,
    header: String,        // request header name, lower case; "" = no header condition
    value: Option<String>, // exact header value; None = any value
    path_prefix: String,   // prefix of the path without its query string; "" = no path condition
}

impl Rule {
    fn matches(&self, path: &str, headers: &[(String, Vec<u8>)]) -> bool {
        if !self.path_prefix.is_empty() && !path.starts_with(&self.path_prefix) {
            return false;
        }
        if !self.header.is_empty() {
            let found = headers.iter().any(|(key, value)| {
                key.to_lowercase() == self.header
                    && self.value.as_ref().map_or(true, |wanted| value.as_slice() == wanted.as_bytes())
            });
            if !found {
                return false;
            }
        }
        true
    }
}

#[derive(Debug)]
struct Config {
    rules: Vec<Rule>,
    header_rules: bool, // some rule looks at a request header
    deny_status: u32,
    deny_body: String,
    rule_header: String, // response header naming the matched rule; "" = none
    request_header: Option<(String, String)>,
    response_header: Option<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rules: Vec::new(),
            header_rules: false,
            deny_status: 403,
            deny_body: "request denied\n".to_string(),
            rule_header: "x-policy-rule".to_string(),
            request_header: Some(("x-policy-checked".to_string(), FILTER_NAME.to_string())),
            response_header: Some(("x-filter".to_string(), FILTER_NAME.to_string())),
        }
    }
}

const TOP_KEYS: &[&str] = &["deny", "deny_status", "deny_body", "rule_header", "request_header", "response_header"];
const RULE_KEYS: &[&str] = &["name", "header", "value", "path_prefix"];
const HEADER_KEYS: &[&str] = &["name", "value"];
// Examples in error messages (kept out of format strings, where braces would need doubling).
const HEADER_EXAMPLE: &str = r#"{"name": "x-example", "value": "1"}"#;
const RULE_EXAMPLES: (&str, &str) = (r#"{"header": "x-block", "value": "1"}"#, r#"{"path_prefix": "/admin"}"#);

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Collects the problems of one configuration text.
#[derive(Default)]
struct ConfigReader {
    errors: Vec<String>,
}

impl ConfigReader {
    fn warn_unknown_keys(&self, obj: &Map<String, Value>, allowed: &[&str], place: &str) {
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                log(
                    LogLevel::Warn,
                    &format!(
                        "configuration: ignoring unknown key '{}' in {} (known: {})",
                        key,
                        place,
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn str(&mut self, obj: &Map<String, Value>, key: &str, place: &str, fallback: &str) -> String {
        match obj.get(key) {
            None => fallback.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                self.errors.push(format!("{}.{} must be a string, not {}", place, key, kind_name(other)));
                fallback.to_string()
            }
        }
    }

    /// `request_header` / `response_header`: an object {name, value}, or null for no header.
    fn header(&mut self, obj: &Map<String, Value>, key: &str, current: Option<(String, String)>) -> Option<(String, String)> {
        let value = match obj.get(key) {
            None => return current,
            Some(Value::Null) => return None, // null switches the header off
            Some(Value::Object(v)) => v,
            Some(other) => {
                self.errors.push(format!(
                    "{} must be an object like {} or null, not {}",
                    key,
                    HEADER_EXAMPLE,
                    kind_name(other)
                ));
                return current;
            }
        };
        self.warn_unknown_keys(value, HEADER_KEYS, key);
        let name = self.str(value, "name", key, "").to_lowercase();
        let text = self.str(value, "value", key, FILTER_NAME);
        if name.is_empty() {
            self.errors.push(format!("{}.name is missing (use \"{}\": null to add no header)", key, key));
            return None;
        }
        Some((name, text))
    }

    fn rule(&mut self, value: &Value, index: usize) -> Option<Rule> {
        let place = format!("deny[{}]", index);
        let obj = match value {
            Value::Object(obj) => obj,
            other => {
                self.errors.push(format!(
                    "{} must be an object like {} or {}, not {}",
                    place,
                    RULE_EXAMPLES.0,
                    RULE_EXAMPLES.1,
                    kind_name(other)
                ));
                return None;
            }
        };
        self.warn_unknown_keys(obj, RULE_KEYS, &place);
        let mut rule = Rule {
            header: self.str(obj, "header", &place, "").to_lowercase(),
            value: if obj.contains_key("value") { Some(self.str(obj, "value", &place, "")) } else { None },
            path_prefix: self.str(obj, "path_prefix", &place, ""),
            ..Rule::default()
        };
        if rule.header.is_empty() && rule.path_prefix.is_empty() {
            self.errors.push(format!("{} needs \"header\" and/or \"path_prefix\"", place));
            return None;
        }
        if rule.value.is_some() && rule.header.is_empty() {
            self.errors.push(format!("{} has a \"value\" but no \"header\"", place));
        }
        let mut name = self.str(obj, "name", &place, "");
        if name.is_empty() {
            if !rule.header.is_empty() {
                name = format!("header:{}", rule.header);
                if let Some(value) = &rule.value {
                    name.push('=');
                    name.push_str(value);
                }
            }
            if !rule.path_prefix.is_empty() {
                if !name.is_empty() {
                    name.push(',');
                }
                name.push_str("path:");
                name.push_str(&rule.path_prefix);
            }
        }
        rule.name = name;
        Some(rule)
    }

    fn read(&mut self, text: &str) -> Option<Config> {
        let mut config = Config::default();
        if text.trim().is_empty() {
            return Some(config); // empty configuration: the defaults
        }
        let top = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(top)) => top,
            Ok(other) => {
                self.errors.push(format!("must be a JSON object, not {}", kind_name(&other)));
                return None;
            }
            Err(err) => {
                self.errors.push(format!("not valid JSON: {}", err));
                return None;
            }
        };
        self.warn_unknown_keys(&top, TOP_KEYS, "the configuration");
        match top.get("deny") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(rule) = self.rule(item, i) {
                        config.header_rules |= !rule.header.is_empty();
                        config.rules.push(rule);
                    }
                }
            }
            Some(other) => self.errors.push(format!("deny must be a list of rules, not {}", kind_name(other))),
        }
        if let Some(status) = top.get("deny_status") {
            match status.as_f64() {
                Some(n) if n.fract() == 0.0 && (200.0..=599.0).contains(&n) => config.deny_status = n as u32,
                _ => self.errors.push("deny_status must be a whole number from 200 to 599".to_string()),
            }
        }
        config.deny_body = self.str(&top, "deny_body", "the configuration", &config.deny_body);
        config.rule_header = self.str(&top, "rule_header", "the configuration", &config.rule_header).to_lowercase();
        config.request_header = self.header(&top, "request_header", config.request_header.take());
        config.response_header = self.header(&top, "response_header", config.response_header.take());
        if self.errors.is_empty() {
            Some(config)
        } else {
            None
        }
    }
}

// -------------------------------------------------------------------------------------------------
// the filter

struct PolicyRoot {
    config: Rc<Config>,
}

impl Context for PolicyRoot {}

impl RootContext for PolicyRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Always re-read: an empty configuration means the defaults, also after a non-empty one.
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let mut reader = ConfigReader::default();
        match reader.read(&text) {
            Some(config) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "configured: {} deny rule(s){}",
                        config.rules.len(),
                        if text.trim().is_empty() { " (empty configuration, defaults)" } else { "" }
                    ),
                );
                self.config = Rc::new(config);
                true
            }
            None => {
                log(LogLevel::Error, &format!("configuration refused: {}", reader.errors.join("; ")));
                false // Envoy rejects the configuration; a running filter keeps its previous one
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // A stream keeps the configuration it started with.
        Some(Box::new(PolicyStream { config: Rc::clone(&self.config) }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct PolicyStream {
    config: Rc<Config>,
}

impl Context for PolicyStream {}

impl PolicyStream {
    fn request_header(&self, name: &str) -> String {
        let value = self.get_http_request_header_bytes(name).unwrap_or_default();
        String::from_utf8_lossy(&value).into_owned()
    }
}

impl HttpContext for PolicyStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        let method = self.request_header(":method");
        let full_path = self.request_header(":path");
        let path = full_path.split('?').next().unwrap_or_default();
        let headers = if config.header_rules { self.get_http_request_headers_bytes() } else { Vec::new() };
        if let Some(rule) = config.rules.iter().find(|rule| rule.matches(path, &headers)) {
            log(
                LogLevel::Info,
                &format!("denied {} {}: rule '{}' -> {}", method, path, rule.name, config.deny_status),
            );
            let mut extra = Vec::new();
            if !config.rule_header.is_empty() {
                extra.push((config.rule_header.as_str(), rule.name.as_str()));
            }
            self.send_http_response(config.deny_status, extra, Some(config.deny_body.as_bytes()));
            return Action::Pause;
        }
        log(LogLevel::Debug, &format!("allowed {} {}", method, path));
        if let Some((name, value)) = &config.request_header {
            // Replace, so a client cannot send its own value to the upstream.
            self.set_http_request_header(name, None);
            self.add_http_request_header(name, value);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some((name, value)) = &self.config.response_header {
            self.set_http_response_header(name, None);
            self.add_http_response_header(name, value);
        }
        Action::Continue
    }
}
