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


def run_spec(project: Project, spec: Spec, targets: list[str], *, envoy_version: str,
             wasm: Path | None = None) -> list[TargetRun]:
    wasm = wasm or project.wasm_path
    runs = []
    for target in targets:
        started = time.monotonic()
        if target == "host":
            label, observations, failures, logs = _on_host(project, spec, wasm)
        else:
            label, observations, failures, logs = _on_envoy(project, spec, wasm, envoy_version)
        results = tuple(judge(case, label, obs) for case, obs in zip(spec.cases, observations))
        runs.append(TargetRun(label, results, tuple(failures), tuple(logs), time.monotonic() - started))
    return runs


def _on_host(project: Project, spec: Spec, wasm: Path):
    from .host import run_spec as run_on_host

    # Side by side, as in the Envoy runner: one root context per distinct plugin configuration.
    run = run_on_host(spec, wasm, default_config=project.plugin_config_text, root_id=project.root_id,
                      retire_old_roots=False)
    logs = [f"[{r.level}] {r.message}" for r in run.plugin_logs]
    return "host", run.observations, run.vm_errors, logs


def _on_envoy(project: Project, spec: Spec, wasm: Path, version: str):
    from .envoy import run_spec as run_on_envoy

    run = run_on_envoy(spec, wasm, default_config=project.plugin_config_text, root_id=project.root_id,
                       name=project.name, version=version)
    logs = [f"[{r.level}] {r.message}" for r in run.plugin_logs]
    return f"envoy-{version}", run.observations, run.plugin_failures, logs
