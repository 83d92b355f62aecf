"""The server seam: with no URL configured, the core takes its server from a `ServerProvider`;
the embedded server is only the default one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conftest import database_names, drop_databases_with_prefix
from sqlalchemy.engine import URL

from finreport_testdb import ServerProvider, resolve_settings
from finreport_testdb.core.provider import started_action
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.embedded import EmbeddedServer, default_cache_dir


@dataclass
class Running:
    url: URL


class CountingProvider:
    """A provider for a server something else runs (here: the test's server)."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.starts = 0

    def start(self) -> Running:
        self.starts += 1
        return Running(self.url.set(database="postgres"))


def test_a_provider_replaces_the_embedded_server(
    server: URL, base_name: str, server_cleanup: None, tiny_project: Path
) -> None:
    provider = CountingProvider(server)
    settings = resolve_settings({"base_name": base_name}, cwd=tiny_project, environ={})
    assert settings.url is None  # nothing configured: without a provider, the embedded server
    with ProjectDatabases.from_settings(settings, server=provider) as databases:
        assert provider.starts == 1
        assert databases.server_url.database == base_name
        assert databases.server_url.password == server.password  # intact, not masked
        assert databases.embedded_action is None  # the header announces nothing it did not do
        template = databases.ensure_template()
        clone = databases.clone_for_worker("gw0")
    assert {template.name, clone.name} <= database_names(server, base_name)
    # ...and no embedded server was started for the project.
    assert EmbeddedServer(default_cache_dir(tiny_project)).status() is None
    drop_databases_with_prefix(server, base_name)


def test_a_configured_url_wins_over_the_provider(
    server: URL, base_name: str, server_cleanup: None, tiny_project: Path
) -> None:
    provider = CountingProvider(server)
    settings = resolve_settings(
        {"url": server.set(database=base_name).render_as_string(hide_password=False)},
        cwd=tiny_project,
        environ={},
    )
    with ProjectDatabases.from_settings(settings, server=provider) as databases:
        assert databases.server_url.database == base_name
    assert provider.starts == 0


def test_the_embedded_server_is_a_provider() -> None:
    provider: ServerProvider = EmbeddedServer(Path("/nonexistent-cache"))
    assert started_action(provider) is None  # nothing started yet
    assert started_action(CountingProvider(URL.create("postgresql"))) is None
