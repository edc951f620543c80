"""PgBouncer in front of the test server, in transaction pooling mode (Debian's ``pgbouncer``)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgserver import ServerInfo


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as(server: ServerInfo) -> str:
    """The user PgBouncer drops to: whoever may open the server's socket directory."""
    if server.host.startswith("/"):
        return pwd.getpwuid(os.stat(server.host).st_uid).pw_name
    return "nobody"


def _login(server: ServerInfo, os_user: str) -> str:
    """The role PgBouncer logs in as: the one named like its OS user when there is one (a
    Debian cluster's ``postgres``, which peer authentication lets in), else the tests' own."""
    with psycopg.connect(**server.connect_kwargs("postgres")) as conn:
        found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (os_user,)).fetchone()
    return os_user if found else server.user


@contextlib.contextmanager
def pgbouncer(server: ServerInfo, *, pool_size: int) -> Iterator[ServerInfo]:
    """Start PgBouncer (``pool_mode = transaction``) in front of ``server``.

    Every database of the server is reachable through it by name. ``pool_size`` server
    connections per database and user: with 1, every client transaction runs on the same
    server connection, one after the other, which is the harshest case for session state.
    Skips the test when ``pgbouncer`` is not installed, except in CI, where ``.ci/run``
    installs it and a missing one is an error.
    """
    binary = shutil.which("pgbouncer")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is not installed; .ci/run installs Debian's pgbouncer")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    user = _run_as(server)
    workdir = Path(tempfile.mkdtemp(prefix="eventlog-pgbouncer-"))
    port = _free_port()
    config = workdir / "pgbouncer.ini"
    login = _login(server, user)
    password = f" password={server.password}" if server.password and login == server.user else ""
    config.write_text(
        "[databases]\n"
        f"* = host={server.host} port={server.port} user={login}{password}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = any\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 100\n"
        f"logfile = {workdir}/pgbouncer.log\n"
        f"pidfile = {workdir}/pgbouncer.pid\n"
    )
    owner = pwd.getpwnam(user)
    for path in (workdir, config):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    command = [binary, str(config)]
    if os.geteuid() == 0:
        command[1:1] = ["-u", user]  # PgBouncer refuses to run as root
    errors = workdir / "stderr"
    with errors.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log = workdir / "pgbouncer.log"
                said = errors.read_text() + (log.read_text() if log.exists() else "")
                raise RuntimeError(f"pgbouncer did not start: {said}")
            time.sleep(0.05)
        yield ServerInfo(host="127.0.0.1", port=port, user=server.user, password=server.password)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
