"""``filterkit.yaml``: the project file of a filter, parsed once into a ``Project``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .spec import plugin_config_text
from .yamlfile import Node, load_yaml

PROJECT_FILE = "filterkit.yaml"
LANGUAGES = ("assemblyscript", "rust")
DEFAULT_ENVOY_VERSION = "1.40.0"
ISTIO_PHASES = ("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS")
ISTIO_FAIL_STRATEGIES = ("FAIL_CLOSE", "FAIL_OPEN")
# DNS-1123 label: usable as a Kubernetes name, an Envoy root id and a file name.
NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
NAME_RULE = "lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63"


def check_name(name: str) -> str | None:
    """None when ``name`` is a valid filter name, else why not."""
    if not NAME_PATTERN.fullmatch(name or ""):
        return f"'{name}' is not a valid filter name ({NAME_RULE} characters)"
    return None


@dataclass(frozen=True)
class BuildSettings:
    optimize: bool = True  # release build (asc -O3 / cargo --release); false for a debug build
    rust_build_std: bool | None = None  # Rust: build std from source (None: only when no prebuilt wasm std)
    wasm_opt: bool = True  # Rust: shrink the module with binaryen's wasm-opt when it is installed
    in_container: bool = False  # Rust: always build in a container (as `filterkit build --in-container`)
    container_image: str | None = None  # Rust: the image of container builds (default rust:1-slim)


@dataclass(frozen=True)
class EnvoySettings:
    version: str = DEFAULT_ENVOY_VERSION


@dataclass(frozen=True)
class IstioSettings:
    selector: tuple[tuple[str, str], ...] = ()
    namespace: str | None = None
    phase: str = "AUTHN"
    priority: int | None = None
    fail_strategy: str = "FAIL_CLOSE"
    image: str | None = None  # default OCI reference for `filterkit manifest istio`


@dataclass(frozen=True)
class Project:
    root: Path
    file: Path
    name: str
    language: str
    root_id: str
    plugin_config: Any = None  # as written in filterkit.yaml (mapping, list, string or None)
    build: BuildSettings = field(default_factory=BuildSettings)
    envoy: EnvoySettings = field(default_factory=EnvoySettings)
    istio: IstioSettings = field(default_factory=IstioSettings)

    @property
    def wasm_path(self) -> Path:
        return self.root / "build" / f"{self.name}.wasm"

    @property
    def plugin_config_text(self) -> str:
        return plugin_config_text(self.plugin_config)

    @property
    def default_spec(self) -> Path:
        return self.root / "tests" / "spec.yaml"


def find_project_file(path: Path) -> Path:
    """``path`` may be the project folder or its ``filterkit.yaml``."""
    candidate = path / PROJECT_FILE if path.is_dir() else path
    if not candidate.is_file():
        raise InputError(f"no {PROJECT_FILE} here (run 'filterkit new NAME' to create a project, "
                         "or pass the project folder)", path=candidate)
    return candidate


def load_project(path: Path) -> Project:
    file = find_project_file(path)
    top = load_yaml(file, PROJECT_FILE).mapping(
        allowed=("name", "language", "root_id", "plugin_config", "build", "envoy", "istio"))
    name_node = top.require("name", "the filter's name, e.g. 'name: my-filter'")
    name = name_node.str()
    problem = check_name(name)
    if problem:
        raise name_node.error(problem)
    language = top.require("language", "the language the filter is written in").choice(LANGUAGES)
    root_id = top.get("root_id").str() if top.get("root_id") else name
    plugin_config = top.items["plugin_config"].value() if "plugin_config" in top else None
    return Project(
        root=file.parent.resolve(),
        file=file,
        name=name,
        language=language,
        root_id=root_id,
        plugin_config=plugin_config,
        build=_build(top.get("build")),
        envoy=_envoy(top.get("envoy")),
        istio=_istio(top.get("istio")),
    )


def _build(node: Node | None) -> BuildSettings:
    if node is None:
        return BuildSettings()
    m = node.mapping(allowed=("optimize", "rust_build_std", "wasm_opt", "in_container", "container_image"))
    return BuildSettings(optimize=m.get("optimize").bool() if m.get("optimize") else True,
                         rust_build_std=m.get("rust_build_std").bool() if m.get("rust_build_std") else None,
                         wasm_opt=m.get("wasm_opt").bool() if m.get("wasm_opt") else True,
                         in_container=m.get("in_container").bool() if m.get("in_container") else False,
                         container_image=m.get("container_image").str() if m.get("container_image") else None)


def _envoy(node: Node | None) -> EnvoySettings:
    if node is None:
        return EnvoySettings()
    m = node.mapping(allowed=("version",))
    if not m.get("version"):
        return EnvoySettings()
    version_node = m.get("version")
    version = version_node.str()
    if not re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", version):
        raise version_node.error(f"'{version}' is not an Envoy version like 1.40.0")
    return EnvoySettings(version=version)


def _istio(node: Node | None) -> IstioSettings:
    if node is None:
        return IstioSettings()
    m = node.mapping(allowed=("selector", "namespace", "phase", "priority", "fail_strategy", "image"))
    selector = ()
    if m.get("selector"):
        selector = tuple((k, v.str()) for k, v in m.get("selector").mapping())
    namespace = m.get("namespace").str() if m.get("namespace") else None
    if namespace is not None and check_name(namespace):
        raise m.get("namespace").error(f"'{namespace}' is not a valid Kubernetes namespace")
    return IstioSettings(
        selector=selector,
        namespace=namespace,
        phase=m.get("phase").choice(ISTIO_PHASES) if m.get("phase") else "AUTHN",
        priority=m.get("priority").int(-(2**31), 2**31 - 1) if m.get("priority") else None,
        fail_strategy=m.get("fail_strategy").choice(ISTIO_FAIL_STRATEGIES) if m.get("fail_strategy") else "FAIL_CLOSE",
        image=m.get("image").str() if m.get("image") else None,
    )
