"""pytest plugin: test a compiled proxy-wasm filter with ordinary pytest tests, on filterkit's
in-process host (registered through the ``pytest11`` entry point ``filterkit``; nothing to import).

Fixtures:

``filterkit_project``  (session) the filterkit project under test: ``--filterkit-project PATH``, the
                       ``filterkit_project`` ini option, or the nearest ``filterkit.yaml`` at or above
                       pytest's rootdir. Skips the test when there is none.
``filterkit_wasm``     (session) the project's ``build/<name>.wasm``, built first (``filterkit build``,
                       skipped when up to date) unless ``--filterkit-no-build``.
``filterkit_host``     a factory: ``filterkit_host(wasm=None, config=None, **options) -> PluginHost``,
                       started (``start=False`` to start it yourself) with the project's root id and
                       plugin configuration unless given; every host it made is shut down at teardown.
                       Options are ``PluginHost``'s (``properties``, ``http_answers``, ``clock`` …).

Example::

    def test_denies_admin(filterkit_host):
        host = filterkit_host(config={"deny": [{"path_prefix": "/admin"}]})
        stream = host.http_stream()
        assert stream.request_headers([(":path", "/admin"), (":method", "GET"), (":authority", "x")]) \\
            == Action.STOP_ITERATION
        assert stream.local_response.status == 403
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from .host import PluginHost
from .spec import plugin_config_text

PROJECT_FILE = "filterkit.yaml"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("filterkit", "filterkit (proxy-wasm filters on the in-process host)")
    group.addoption("--filterkit-project", metavar="PATH", default=None,
                    help="the filterkit project whose filter the tests load (default: nearest filterkit.yaml)")
    group.addoption("--filterkit-no-build", action="store_true", default=False,
                    help="use build/<name>.wasm as it is instead of running 'filterkit build' first")
    parser.addini("filterkit_project", "the filterkit project folder (relative to the rootdir)", default="")


def _find_project(config: pytest.Config) -> Path | None:
    option = config.getoption("--filterkit-project", default=None)
    if not option:
        try:
            option = config.getini("filterkit_project")
        except ValueError:  # the plugin's options are not registered (fixtures imported directly)
            option = ""
    if option:
        path = Path(option)
        if not path.is_absolute():
            path = Path(config.rootpath) / path
        return path
    here = Path(config.rootpath).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    return None


@pytest.fixture(scope="session")
def filterkit_project(pytestconfig: pytest.Config):
    """The filterkit project under test (``filterkit.project.Project``)."""
    from .errors import InputError
    from .project import load_project

    root = _find_project(pytestconfig)
    if root is None:
        pytest.skip(f"no {PROJECT_FILE} at or above {pytestconfig.rootpath} (pass --filterkit-project PATH)")
    try:
        return load_project(root)
    except InputError as err:
        pytest.fail(f"filterkit project: {err}", pytrace=False)


@pytest.fixture(scope="session")
def filterkit_wasm(pytestconfig: pytest.Config, filterkit_project) -> Path:
    """The project's compiled filter, built first when out of date."""
    wasm = filterkit_project.wasm_path
    if not pytestconfig.getoption("--filterkit-no-build", default=False):
        from .build import BuildError, build_project
        from .errors import FilterkitError

        try:
            build_project(filterkit_project, log=lambda *_args, **_kw: None)
        except (BuildError, FilterkitError) as err:
            pytest.fail(f"filterkit build failed: {err}", pytrace=False)
    if not wasm.is_file():
        pytest.fail(f"{wasm} does not exist (run 'filterkit build')", pytrace=False)
    return wasm


@pytest.fixture
def filterkit_host(request: pytest.FixtureRequest) -> Callable[..., PluginHost]:
    """Factory of started ``PluginHost`` objects, shut down at teardown."""
    made: list[PluginHost] = []

    def make(wasm: Path | str | bytes | None = None, config: Any = None, *, start: bool = True,
             **options: Any) -> PluginHost:
        """``wasm`` None: the project's module, root id, name and default configuration."""
        if wasm is None:
            project = request.getfixturevalue("filterkit_project")
            wasm = request.getfixturevalue("filterkit_wasm")
            options.setdefault("root_id", project.root_id)
            options.setdefault("plugin_name", project.name)
            if config is None:
                config = project.plugin_config
        options["plugin_config"] = config if isinstance(config, (str, bytes)) else plugin_config_text(config)
        host = PluginHost(wasm, **options)
        made.append(host)
        if start:
            host.start()
        return host

    yield make
    for host in made:
        try:
            host.shutdown()
        except Exception:  # noqa: BLE001 - a trap at shutdown is the test's business (host.failures)
            pass

