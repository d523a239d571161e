"""Unit tests for {{ name }}: plain pytest tests against build/{{ name }}.wasm on filterkit's in-process
proxy-wasm host (the `filterkit` pytest plugin comes with filterkit; nothing to configure).

    pip install filterkit pytest
    pytest tests/          # builds build/{{ name }}.wasm first when it is out of date

Fixtures: `filterkit_host(config=...)` starts the filter (default: the plugin_config of filterkit.yaml)
and shuts it down after the test; `filterkit_wasm` is the built module. Each call below is one
proxy-wasm callback, as Envoy makes it. tests/spec.yaml holds the end-to-end cases that also run on Envoy.
"""

import pytest

from filterkit.host import Action, PluginFailed
from filterkit.spec import UpstreamAnswer

NAME = "{{ name }}"


def request(path="/orders", method="GET", extra=()):
    return [(":authority", "shop.example"), (":path", path), (":method", method), (":scheme", "http"),
            ("x-request-id", "8d1c4f52-4c4e-4d0e-9c1e-0d5d0f6f2b11"), *extra]


def test_allowed_request_gets_the_policy_header(filterkit_host):
    host = filterkit_host()
    stream = host.http_stream()
    assert stream.request_headers(request("/orders")) == Action.CONTINUE
    assert stream.local_response is None
    assert stream.request_header_map.get("x-policy-checked") == NAME
    assert any(r.level == "debug" and "allowed GET /orders" in r.message for r in stream.logs)


def test_a_client_cannot_forge_the_policy_header(filterkit_host):
    stream = filterkit_host().http_stream()
    stream.request_headers(request(extra=[("x-policy-checked", "forged")]))
    assert stream.request_header_map.get_all("x-policy-checked") == [NAME]


def test_admin_area_is_denied_with_a_local_response(filterkit_host):
    stream = filterkit_host().http_stream()
    assert stream.request_headers(request("/admin/users")) == Action.STOP_ITERATION
    reply = stream.local_response
    assert reply.status == 403
    assert ("x-policy-rule", "admin-area") in reply.headers
    assert reply.body == f"request denied by {NAME}\n".encode()


def test_a_rule_from_the_test_configuration(filterkit_host):
    host = filterkit_host(config={"deny": [{"name": "no-bots", "header": "user-agent", "value": "bot"}],
                                  "deny_status": 429})
    stream = host.http_stream()
    stream.request_headers(request(extra=[("user-agent", "bot")]))
    assert stream.local_response.status == 429
    assert host.http_stream().request_headers(request(extra=[("user-agent", "curl")])) == Action.CONTINUE


def test_an_invalid_configuration_is_refused(filterkit_host):
    with pytest.raises(PluginFailed, match="proxy_on_configure returned false"):
        filterkit_host(config={"deny": "everything"})


def test_whole_exchange_like_envoy(filterkit_host):
    upstream = UpstreamAnswer(200, (("content-type", "text/plain"),), b"ok")
    seen = filterkit_host().http_stream().exchange(request(), b"", upstream)
    assert seen.error is None
    assert seen.upstream_request.header("x-policy-checked") == NAME
    assert (seen.response.status, seen.response.header("x-filter"), seen.response.body) == (200, NAME, b"ok")


def test_linear_memory_does_not_grow_per_request(filterkit_host):
    assert filterkit_host().memory_growth_per_request(500) < 64
