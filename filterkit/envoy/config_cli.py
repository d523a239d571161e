"""``filterkit envoy config [PATH] [--variant http|network|ecds] [-o FILE]``: an Envoy bootstrap for the
filter project at PATH, rendered from ``envoy-configs/`` and validated against Envoy's API protos.

Registered on the ``filterkit envoy`` group (filterkit/envoy/cli.py).
"""

from __future__ import annotations

from pathlib import Path

import click

from .config import FAILURE_POLICIES, VARIANTS


@click.command("config")
@click.argument("path", type=click.Path(path_type=Path), default=Path("."), required=False)
@click.option("--variant", type=click.Choice(list(VARIANTS)), default="http", show_default=True,
              help="http: HTTP filter chain; network: envoy.filters.network.wasm + tcp_proxy; "
                   "ecds: HTTP chain with the filter config delivered by ECDS (from a file or xDS).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write the bootstrap here [default: stdout]. ECDS files go next to it.")
@click.option("--wasm", "wasm", type=click.Path(path_type=Path), help="The .wasm to load [default: the project's build/<name>.wasm].")
@click.option("--also", "also", multiple=True, type=click.Path(path_type=Path),
              help="Another filter project to chain after this one (repeatable; list order is chain order).")
@click.option("--failure-policy", type=click.Choice([p for p in FAILURE_POLICIES], case_sensitive=False),
              help="PluginConfig.failure_policy [default: Envoy's, FAIL_CLOSED].")
@click.option("--listen-port", type=int, default=10000, show_default=True)
@click.option("--upstream", default="127.0.0.1:8080", show_default=True, help="HOST:PORT of the upstream.")
@click.option("--admin-port", type=int, default=9901, show_default=True)
@click.option("--ecds-source", type=click.Choice(["path", "xds"]), default="path", show_default=True,
              help="ecds variant: files watched by Envoy, or a gRPC xDS server (--xds HOST:PORT).")
@click.option("--xds", default="127.0.0.1:18000", show_default=True, help="ecds variant with --ecds-source xds: HOST:PORT.")
def envoy_config(path: Path, variant: str, output: Path | None, wasm: Path | None, also: tuple[Path, ...],
                 failure_policy: str | None, listen_port: int, upstream: str, admin_port: int, ecds_source: str,
                 xds: str) -> None:
    """Render a validated Envoy bootstrap that runs the filter at PATH."""
    from ..errors import InputError
    from ..project import load_project
    from .config import WasmFilter, render_variant

    projects = [load_project(path)] + [load_project(p) for p in also]
    filters = []
    for i, project in enumerate(projects):
        module = wasm if (i == 0 and wasm is not None) else project.wasm_path
        if not Path(module).is_file():
            click.echo(f"note: {module} does not exist yet; run 'filterkit build {project.root}'", err=True)
        filters.append(WasmFilter(project.name, project.root_id, str(module), project.plugin_config_text))

    def host_port(text: str, option: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"{option} {text!r}: expected HOST:PORT")
        return host, int(port)

    upstream_host, upstream_port = host_port(upstream, "--upstream")
    xds_host, xds_port = host_port(xds, "--xds")
    ecds_dir = (output.parent if output is not None and str(output) != "-" else Path("."))
    rendered = render_variant(variant, filters, listen_port=listen_port, upstream_host=upstream_host,
                              upstream_port=upstream_port, admin_port=admin_port, failure_policy=failure_policy,
                              ecds_source=ecds_source, ecds_dir=ecds_dir, xds_host=xds_host, xds_port=xds_port)
    if output is None or str(output) == "-":
        click.echo(rendered.bootstrap, nl=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(rendered.bootstrap)
        click.echo(f"{variant} bootstrap written to {output} (validated)", err=True)
    for file, text in rendered.ecds_files.items():
        Path(file).write_text(text)
        click.echo(f"ECDS resource written to {file}", err=True)
