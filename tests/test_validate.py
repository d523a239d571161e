"""Config validation: rendered bootstraps are parsed into Envoy's Bootstrap proto (xds-protos), typed
``Any`` configs included; problems are reported with their path, fast, without starting Envoy."""

from __future__ import annotations

import time
from pathlib import Path

import jinja2
import pytest

from conftest import REPO, require

try:
    from filterkit.envoy.validate import ConfigValidationError, validate_bootstrap, validate_discovery_response
    HAVE_PROTOS = True
except Exception:  # pragma: no cover
    HAVE_PROTOS = False

from filterkit.envoy import config as cfg

HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


@pytest.fixture(autouse=True)
def _protos():
    try:
        import envoy.config.bootstrap.v3.bootstrap_pb2  # noqa: F401
        ok = True
    except ImportError:
        ok = False
    require("xds-protos", ok, "pip install xds-protos")


def _test_bootstrap(**overrides) -> str:
    args = dict(wasm_path="/tmp/filter.wasm", listeners=[cfg.Listener("config-0", 0, '{"a": 1}'),
                                                         cfg.Listener("filterkit-control", 0, None)],
                plugin_name="demo", root_id="demo", upstream_port=8080, validate=False)
    args.update(overrides)
    return cfg.render_bootstrap(**args)


def _with_template(tmp_path: Path, monkeypatch, name: str, old: str, new: str) -> None:
    """Copy envoy-configs/ to tmp_path with one replacement in template ``name``, and render from there."""
    for source in cfg.CONFIGS.iterdir():
        text = source.read_text()
        if source.name == name:
            assert old in text, f"{old!r} not in {name}"
            text = text.replace(old, new, 1)
        (tmp_path / source.name).write_text(text)
    monkeypatch.setattr(cfg, "CONFIGS", tmp_path)


def test_all_real_templates_validate():
    validate_bootstrap(_test_bootstrap())
    for policy in (None, *cfg.FAILURE_POLICIES):
        validate_bootstrap(_test_bootstrap(failure_policy=policy))
    filters = [cfg.WasmFilter("a", "a", "/tmp/a.wasm", "{}"), cfg.WasmFilter("b", "b", "/tmp/b.wasm", "x")]
    for variant in cfg.VARIANTS:
        for source in ("path", "xds"):
            rendered = cfg.render_variant(variant, filters, ecds_source=source, failure_policy="FAIL_RELOAD",
                                          ecds_dir="/tmp")
            validate_bootstrap(rendered.bootstrap)
            for text in rendered.ecds_files.values():
                validate_discovery_response(text)
    assert set(cfg.render_variant("ecds", filters, ecds_dir="/tmp").ecds_files) == {"/tmp/a.ecds.yaml",
                                                                                 "/tmp/b.ecds.yaml"}


def test_misspelt_field_in_a_template_is_reported_with_its_path(tmp_path, monkeypatch):
    _with_template(tmp_path, monkeypatch, "_wasm.j2", "  runtime: {{", "  runtim: {{")
    started = time.monotonic()
    with pytest.raises(ConfigValidationError) as err:
        cfg.render_bootstrap(wasm_path="/tmp/f.wasm", listeners=[cfg.Listener("config-0", 0, "")],
                             plugin_name="demo", root_id="demo", upstream_port=1)
    assert time.monotonic() - started < 1.0
    assert err.value.errors == [f"{HCM}.http_filters[1].typed_config.config.vm_config.runtim: unknown field "
                                "(in envoy.extensions.wasm.v3.VmConfig)"]
    assert "bootstrap.yaml.j2" in str(err.value)


def test_wrong_type_in_a_template_is_reported_with_its_path(tmp_path, monkeypatch):
    _with_template(tmp_path, monkeypatch, "bootstrap.yaml.j2", "connect_timeout: 5s", "connect_timeout: [5]")
    with pytest.raises(ConfigValidationError) as err:
        _test_bootstrap(validate=True)
    assert err.value.errors[0].startswith("static_resources.clusters[0].connect_timeout: ")
    _with_template(tmp_path, monkeypatch, "listener.yaml.j2", "codec_type: AUTO", "codec_type: AUTOMATIC")
    with pytest.raises(ConfigValidationError) as err:
        _test_bootstrap(validate=True)
    assert err.value.errors[0].startswith(f"{HCM}.codec_type: wrong type or value 'AUTOMATIC'")
    assert "CodecType" in err.value.errors[0]


def test_wrong_type_url_is_reported_with_its_path():
    text = _test_bootstrap().replace("filters.http.wasm.v3.Wasm", "filters.http.wasm.v3.WasmFilter")
    with pytest.raises(ConfigValidationError) as err:
        validate_bootstrap(text)
    assert err.value.errors == [f"{HCM}.http_filters[1].typed_config.@type: unknown @type URL "
                                "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.WasmFilter "
                                "(no such Envoy API type)"]


def test_scalar_and_list_shape_errors():
    with pytest.raises(ConfigValidationError) as err:
        validate_bootstrap({"static_resources": {"listeners": {"name": "x"}}})
    assert err.value.errors == ["static_resources.listeners: expected a list, got dict {'name': 'x'}"]
    with pytest.raises(ConfigValidationError) as err:
        validate_bootstrap({"admin": {"address": {"socket_address": {"port_value": "http"}}}})
    assert err.value.errors[0].startswith("admin.address.socket_address.port_value: wrong type or value 'http'")
    with pytest.raises(ConfigValidationError) as err:
        validate_bootstrap("- just\n- a list\n")
    assert "mapping" in err.value.errors[0]


def test_validation_is_fast():
    text = _test_bootstrap()
    validate_bootstrap(text)  # warm: the imports
    started = time.monotonic()
    for _ in range(10):
        validate_bootstrap(text)
    assert (time.monotonic() - started) / 10 < 0.1


def test_unknown_failure_policy_is_an_input_error():
    from filterkit.errors import InputError
    with pytest.raises(InputError):
        _test_bootstrap(failure_policy="FAIL_SOMETIMES")
    assert "failure_policy: FAIL_OPEN" in _test_bootstrap(failure_policy="fail-open")


def test_envoy_config_command(tmp_path):
    from conftest import run_filterkit
    project = tmp_path / "demo"
    made = run_filterkit("new", "demo", "--dir", project)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out" / "envoy.yaml"
    done = run_filterkit("envoy", "config", project, "--variant", "ecds", "-o", out, "--failure-policy", "FAIL_OPEN")
    assert done.returncode == 0, done.stderr
    validate_bootstrap(out.read_text())
    ecds = tmp_path / "out" / "demo.ecds.yaml"
    assert "failure_policy: FAIL_OPEN" in ecds.read_text()
    validate_discovery_response(ecds.read_text())
    shown = run_filterkit("envoy", "config", project, "--variant", "network")
    assert shown.returncode == 0, shown.stderr
    assert "envoy.extensions.filters.network.wasm.v3.Wasm" in shown.stdout and "tcp_proxy" in shown.stdout
    bad = run_filterkit("envoy", "config", project, "--variant", "nope")
    assert bad.returncode == 2
