from pathlib import Path

import pytest
import yaml

from filterkit.errors import InputError
from filterkit.project import IstioSettings, Project
from filterkit.ship import istio_manifest, write_istio_manifest

MODULE_SHA = "ab" * 32


def project(**overrides) -> Project:
    values = dict(root=Path("."), file=Path("filterkit.yaml"), name="demo", language="assemblyscript",
                  root_id="demo-root", plugin_config={"deny": [{"header": "x-block"}], "deny_status": 403},
                  istio=IstioSettings(selector=(("app", "web"),), namespace="shop", priority=10, phase="AUTHZ"))
    values.update(overrides)
    return Project(**values)


def test_wasmplugin_fields():
    doc = yaml.safe_load(istio_manifest(project(), "registry.local:5000/filters/demo:1.0", MODULE_SHA))
    assert doc["apiVersion"] == "extensions.istio.io/v1alpha1"
    assert doc["kind"] == "WasmPlugin"
    assert doc["metadata"]["name"] == "demo"
    assert doc["metadata"]["namespace"] == "shop"
    assert doc["metadata"]["annotations"]["filterkit.dev/module-sha256"] == MODULE_SHA
    spec = doc["spec"]
    assert spec["url"] == "oci://registry.local:5000/filters/demo:1.0"
    assert "sha256" not in spec  # Istio checks an oci:// sha256 against the image digest, unknown for a tag
    assert spec["pluginName"] == "demo-root"
    assert spec["selector"] == {"matchLabels": {"app": "web"}}
    assert (spec["phase"], spec["priority"], spec["failStrategy"]) == ("AUTHZ", 10, "FAIL_CLOSE")
    assert spec["pluginConfig"] == {"deny": [{"header": "x-block"}], "deny_status": 403}


def test_digest_pinned_image_sets_sha256_to_the_digest():
    digest = "cd" * 32
    spec = yaml.safe_load(istio_manifest(project(), f"oci://r.io/f/demo@sha256:{digest}", MODULE_SHA))["spec"]
    assert spec["sha256"] == digest


def test_http_url_sets_sha256_to_the_module_hash():
    spec = yaml.safe_load(istio_manifest(project(), "https://files.example.com/demo.wasm", MODULE_SHA))["spec"]
    assert spec["url"] == "https://files.example.com/demo.wasm"
    assert spec["sha256"] == MODULE_SHA


def test_minimal_project_omits_optional_fields():
    doc = yaml.safe_load(istio_manifest(project(plugin_config=None, istio=IstioSettings()), "r.io/a/b:1", MODULE_SHA))
    assert "namespace" not in doc["metadata"]
    assert "selector" not in doc["spec"] and "pluginConfig" not in doc["spec"] and "priority" not in doc["spec"]


@pytest.mark.parametrize("image", ["not an image", "UPPER/case:1", "registry/only:"])
def test_bad_image_reference(image):
    with pytest.raises(InputError, match="not an OCI image reference"):
        istio_manifest(project(), image, MODULE_SHA)


def test_non_object_plugin_config_is_refused():
    with pytest.raises(InputError, match="plugin_config must be a mapping"):
        istio_manifest(project(plugin_config=["a"]), "r.io/a/b:1", MODULE_SHA)


def test_write_replaces_atomically(tmp_path):
    out = write_istio_manifest(project(), "r.io/a/b:1", MODULE_SHA, tmp_path / "k8s" / "plugin.yaml")
    assert yaml.safe_load(out.read_text())["kind"] == "WasmPlugin"
    assert [p.name for p in out.parent.iterdir()] == ["plugin.yaml"]
