"""``filterkit test``: run one parsed spec on each target and judge every case the same way.

The ``Spec`` is parsed once by the caller and handed unchanged to every target; targets only observe,
``verdict.judge`` decides.
"""

from __future__ import annotations

import time
from pathlib import Path

from .project import Project
from .report import TargetRun
from .spec import Spec
from .verdict import judge


def run_spec(project: Project, spec: Spec, targets: list[str], *, envoy_versions: list[str],
             wasm: Path | None = None, log_level: str | None = None, envoy_binary: str | None = None,
             image: str | None = None) -> list[TargetRun]:
    """Run ``spec`` on each target: "host", "envoy" (a local binary) and "docker" (an Envoy container),
    the Envoy targets once per version in ``envoy_versions``.

    ``log_level``: the lowest filter log level kept (host: the level the filter sees through
    proxy_get_log_level and the records kept; Envoy: the ``wasm`` component's log level); None: trace on
    the host, debug on Envoy (the runners' defaults)."""
    wasm = wasm or project.wasm_path
    runs = []
    for target in targets:
        for version in ([None] if target == "host" else envoy_versions):
            started = time.monotonic()
            if target == "host":
                label, observations, failures, logs = _on_host(project, spec, wasm, log_level)
            else:
                label, observations, failures, logs = _on_envoy(
                    project, spec, wasm, version, log_level, binary=envoy_binary if target == "envoy" else None,
                    image=image if target == "docker" else None, in_container=target == "docker")
            results = tuple(judge(case, label, obs) for case, obs in zip(spec.cases, observations))
            runs.append(TargetRun(label, results, tuple(failures), tuple(logs), time.monotonic() - started))
    return runs


def fidelity_of(runs: list[TargetRun]):
    """Differential comparison (``--target all``): the host run against every Envoy run."""
    from .differential import compare_runs

    hosts = [run for run in runs if run.target == "host"]
    if not hosts:
        return ()
    return tuple(f for run in runs if run.target != "host" for f in compare_runs(hosts[0].results, run.results))


def _on_host(project: Project, spec: Spec, wasm: Path, log_level: str | None = None):
    from .host import run_spec as run_on_host

    # Side by side, as in the Envoy runner: one root context per distinct plugin configuration.
    run = run_on_host(spec, wasm, default_config=project.plugin_config_text, root_id=project.root_id,
                      plugin_name=project.name, retire_old_roots=False,
                      **({"log_level": log_level} if log_level else {}))
    logs = [f"[{r.level}] {r.message}" for r in run.plugin_logs]
    return "host", run.observations, run.vm_errors, logs


def _on_envoy(project: Project, spec: Spec, wasm: Path, version: str, log_level: str | None, *,
              binary: str | None, image: str | None, in_container: bool):
    from .envoy import run_spec as run_on_envoy
    from .envoy.container import ContainerSettings

    run = run_on_envoy(spec, wasm, default_config=project.plugin_config_text, root_id=project.root_id,
                       name=project.name, version=version, binary=binary,
                       container=ContainerSettings(image=image) if in_container else None,
                       **({"log_level": log_level} if log_level else {}))
    logs = [f"[{r.level}] {r.message}" for r in run.plugin_logs]
    return run.target, run.observations, run.plugin_failures, logs
