"""The package's log lines: structured fields a JSON log can filter on, and nothing of an
event's content. A refused row is the hard case: PostgreSQL's own message for a check or
not-null violation quotes the whole row, payload included."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import structlog
from hostmodels import HostModels, seed
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from eventlog_persist import (
    BufferedWriter,
    EventWriter,
    RetryPolicy,
    new_event,
    write_events,
)
from eventlog_persist.exceptions import EventWriteError

PRIVATE = "the-patients-diagnosis-is-private"


def conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def strict_table(host_engine: Engine) -> Engine:
    """event_logs with a host constraint that refuses long payloads (and quotes the row)."""
    with host_engine.begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT short_payloads "
                "CHECK (length(payload::text) < 20)"
            )
        )
    return host_engine


@pytest.fixture
def package_log() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger("eventlog_persist")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def everything_said(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(message)s")
    return "\n".join(formatter.format(record) for record in records)


def test_a_refused_row_is_logged_with_its_ids_and_without_its_payload(
    strict_table: Engine, host_models: HostModels, package_log: list[logging.LogRecord]
) -> None:
    user_id, session_id = seed(strict_table, host_models)
    event = new_event(
        session_id=session_id, user_id=user_id, event_type="note", payload={"text": PRIVATE}
    )
    result = write_events(host_models.EventLog, strict_table, [event])  # no hook: logged
    [(_, error)] = result.dead_lettered
    assert error.sqlstate == "23514"
    assert 'violates check constraint "short_payloads"' in str(error)
    assert PRIVATE not in str(error)
    [record] = [r for r in package_log if r.levelno == logging.ERROR]
    assert record.getMessage() == str(error)
    fields = {name: getattr(record, name) for name in ("event_id", "session_id", "event_type")}
    assert fields == {
        "event_id": str(event.id),
        "session_id": str(session_id),
        "event_type": "note",
    }
    assert record.sqlstate == "23514"  # type: ignore[attr-defined]
    assert PRIVATE not in everything_said(package_log)


def test_detached_and_buffered_refusals_do_not_quote_the_row_either(
    strict_table: Engine,
    host_models: HostModels,
    database_url: URL,
    package_log: list[logging.LogRecord],
) -> None:
    user_id, session_id = seed(strict_table, host_models)
    writer = EventWriter(host_models.EventLog)
    with pytest.raises(EventWriteError) as raised:
        writer.record_detached(
            strict_table,
            session_id=session_id,
            user_id=user_id,
            event_type="note",
            payload={"text": PRIVATE},
        )
    assert raised.value.sqlstate == "23514"
    assert PRIVATE not in str(raised.value)
    with BufferedWriter(host_models.EventLog, conninfo(database_url)) as buffered:
        buffered.enqueue(
            session_id=session_id, user_id=user_id, event_type="note", payload={"text": PRIVATE}
        )
    assert buffered.counters.dead_lettered == 1
    assert PRIVATE not in everything_said(package_log)


def test_a_foreign_key_refusal_keeps_the_detail_that_names_the_key(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, _ = seed(host_engine, host_models)
    stranger = uuid.uuid4()
    event = new_event(session_id=stranger, user_id=user_id, event_type="x", payload={"n": 1})
    [(_, error)] = write_events(host_models.EventLog, host_engine, [event]).dead_lettered
    assert error.sqlstate == "23503"
    assert f"DETAIL: Key (session_id)=({stranger}) is not present in table" in str(error)


def test_retries_are_logged_with_the_batch_size_and_the_sqlstate(
    host_engine: Engine,
    host_models: HostModels,
    database_url: URL,
    package_log: list[logging.LogRecord],
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    holder = psycopg.connect(conninfo(database_url))
    holder.execute("SELECT 1 FROM chat_sessions WHERE id = %s FOR UPDATE", (session_id,))
    try:
        write_events(
            host_models.EventLog,
            conninfo(database_url),
            [new_event(session_id=session_id, user_id=user_id, event_type="x") for _ in range(3)],
            lock_timeout=0.05,
            retry=RetryPolicy(max_elapsed=1.5, initial_delay=0.01, max_delay=0.02),
            on_dead_letter=lambda event, error: None,
        )
    finally:
        holder.close()
    retries = [r for r in package_log if r.getMessage().startswith("event write failed")]
    assert retries
    for record in retries:
        assert record.levelno == logging.WARNING
        assert (record.batch_size, record.sqlstate) == (3, "55P03")  # type: ignore[attr-defined]
        assert record.retry_in >= 0  # type: ignore[attr-defined]


def test_structlog_and_json_logs_get_the_fields(
    strict_table: Engine, host_models: HostModels
) -> None:
    """The stdlib bridge a structlog host configures: ``extra=`` fields reach the JSON."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    logger = logging.getLogger("eventlog_persist")
    logger.addHandler(handler)
    try:
        user_id, session_id = seed(strict_table, host_models)
        event = new_event(
            session_id=session_id, user_id=user_id, event_type="note", payload={"text": PRIVATE}
        )
        write_events(host_models.EventLog, strict_table, [event])
    finally:
        logger.removeHandler(handler)
    [line] = lines
    logged: dict[str, Any] = json.loads(line)
    assert logged["level"] == "error"
    assert logged["event_id"] == str(event.id)
    assert logged["session_id"] == str(session_id)
    assert logged["sqlstate"] == "23514"
    assert PRIVATE not in line
