"""Wake-ups for feed readers: a LISTEN connection that hints when a writer stored a batch.

The bulk and buffered writers of a table with the feed send one ``NOTIFY`` per batch they
commit (never one per event: ``NOTIFY`` serializes commits on a server-wide lock). Each
`Wakeups` holds one listening connection, taken out of a psycopg engine's pool (or, for
another driver, opened with psycopg from the engine's URL), and wakes every reader waiting
on it; a notification is only a hint to
read now, so readers still poll at their interval: a record committed in the host's own
transaction sends none, and a notification lost with a broken connection costs latency,
never an event.

A reader takes a `Ticket` before it reads and waits on it after reading nothing: a
notification that arrived in between has already fired that ticket, so it is never slept
through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from typing import Any, Final, TypeAlias

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from eventlog_persist._urls import conninfo
from eventlog_persist.exceptions import ConfigurationError

__all__ = [
    "APPLICATION_NAME",
    "CHANNEL",
    "AsyncWakeups",
    "Ticket",
    "Wakeups",
    "check_poll",
    "notify_statement",
]

logger = logging.getLogger("eventlog_persist")

CHANNEL: Final = "eventlog_persist_feed"
"""The channel writers notify on; the payload is the quoted, qualified table name."""
_RECONNECT_DELAY: Final = (0.1, 5.0)  # first and longest pause between connection attempts
_STOP_CHECK: Final = 0.25  # seconds: how often the sync listener thread checks for close()
# The longest close() waits for the listener thread: one still connecting (a server that does
# not answer) ends by itself once its attempt returns, and close() need not wait for that.
_CLOSE_WAIT: Final = 1.0
_MAX_POLL: Final = 3600.0

Ticket: TypeAlias = threading.Event | asyncio.Event
"""Fired by the first wake-up after it was taken."""


def notify_statement() -> sql.Composed:
    """The statement a writer runs once per committed batch (parameter: the table name)."""
    return sql.SQL("SELECT pg_notify({}, %s)").format(sql.Literal(CHANNEL))


def check_poll(value: object, name: str = "timeout") -> float:
    """Seconds to wait, above 0 and at most an hour, or `ConfigurationError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (0 < value <= _MAX_POLL)
    ):
        raise ConfigurationError(
            f"{name} must be a number of seconds above 0 and at most {_MAX_POLL:g}, got "
            f"{value!r}; it is the longest a reader sleeps before it reads again, which is "
            "the delivery latency of events no writer notifies (records in the host's "
            "transaction)"
        )
    return float(value)


APPLICATION_NAME: Final = "eventlog-persist feed listener"


def _listener_conninfo(target: object) -> str:
    """The engine's conninfo, named in ``pg_stat_activity`` unless it names itself."""
    info = conninfo(target)
    if "application_name" in conninfo_to_dict(info):
        return info
    return make_conninfo(info, application_name=APPLICATION_NAME)


_NAME_IT: Final = sql.SQL("SET application_name = {}").format(sql.Literal(APPLICATION_NAME))
# The listener is idle by design: a role's or database's idle_session_timeout (PostgreSQL 14+)
# would end it every period, losing what was notified meanwhile.
_NO_IDLE_TIMEOUT: Final = sql.SQL("SET idle_session_timeout = 0")
_KEEPALIVE: Final = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))


def _keep_alive(fileno: int, parameters: dict[str, str]) -> None:
    """TCP keepalives after a minute of silence on the listener's socket, unless its
    connection's ``parameters`` (libpq's) set keepalives of their own.

    A NAT or load balancer that drops idle flows (an AWS NLB after 350 s) then keeps this one,
    and a peer gone without a word is noticed within about 90 s, where the system's defaults
    take over two hours and the listener would wait on a dead socket meanwhile.
    """
    if any(name.startswith("keepalives") for name in parameters):
        return  # the host chose; libpq applied it
    with socket.socket(fileno=os.dup(fileno)) as sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # a Unix socket: nothing between the ends to drop it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE:
            if hasattr(socket, name):  # Linux; macOS has TCP_KEEPALIVE instead of the first
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _idle_for_good(info: psycopg.ConnectionInfo) -> list[sql.SQL]:
    """The statements that keep the listener's session from being ended for idling."""
    return [_NO_IDLE_TIMEOUT] if info.server_version >= 140000 else []


def _pooled(engine: object) -> bool:
    """Whether the listener takes its connection from the engine's own pool: a psycopg
    engine's connection is what the listener needs, made as the engine makes it (its
    ``creator``, its ``connect_args``)."""
    return isinstance(engine, (Engine, AsyncEngine)) and engine.dialect.driver == "psycopg"


class _Base:
    def __init__(self, target: object, table_name: str, *, listen: bool) -> None:
        if not isinstance(listen, bool):
            raise ConfigurationError(f"listen must be True or False, got {listen!r}")
        self._engine = target
        # Other drivers' engines (asyncpg, psycopg2, pg8000): psycopg, from the engine's URL.
        self._conninfo = _listener_conninfo(target) if listen and not _pooled(target) else ""
        self._table_name = table_name
        self._listen = listen
        self._failures = 0

    def _pause(self) -> float:
        first, longest = _RECONNECT_DELAY
        return min(longest, first * 2.0 ** min(self._failures, 16))

    def _lost(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures == 1:
            logger.warning(
                "the feed's LISTEN connection failed (%s); readers poll at their interval "
                "until it is back",
                exc,
            )


class Wakeups(_Base):
    """Sync wake-ups: a daemon thread listens and fires the tickets of waiting readers.

    Args:
        target: The engine (or URL) whose database to listen to.
        table_name: The quoted, qualified name writers notify with.
        listen: False: never listen, readers only poll (e.g. behind a pooler in
            transaction mode, where LISTEN does not work).
    """

    def __init__(self, target: object, table_name: str, *, listen: bool = True) -> None:
        super().__init__(target, table_name, listen=listen)
        self._lock = threading.Lock()
        self._ticket = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def ticket(self) -> threading.Event:
        """Take a ticket before reading."""
        with self._lock:
            return self._ticket

    def wait(self, ticket: threading.Event, timeout: float) -> bool:
        """Sleep until ``ticket`` fires or ``timeout`` seconds pass; True when it fired.

        The first wait starts listening, and returns as soon as it listens (what was
        notified before was missed).
        """
        with self._lock:
            if self._listen and self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="eventlog-feed-listener", daemon=True
                )
                self._thread.start()
        return ticket.wait(timeout)

    def _fire(self) -> None:
        with self._lock:
            fired, self._ticket = self._ticket, threading.Event()
        fired.set()

    def _connect(self) -> psycopg.Connection[Any]:
        engine = self._engine
        if not isinstance(engine, Engine) or not _pooled(engine):
            return psycopg.connect(self._conninfo, autocommit=True)
        # Out of the pool for good (it is closed, never returned, when the listener ends).
        proxied = engine.raw_connection()
        conn: psycopg.Connection[Any] = proxied.driver_connection  # type: ignore[assignment]
        proxied.detach()
        try:
            conn.rollback()
            conn.autocommit = True
            conn.execute(_NAME_IT)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    for statement in _idle_for_good(conn.info):
                        conn.execute(statement)
                    _keep_alive(conn.fileno(), conn.info.get_parameters())
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    self._failures = 0
                    self._fire()  # whatever was notified before this point was missed
                    while not self._stop.is_set():
                        # At once: the generator runs on until its timeout.
                        for notify in conn.notifies(timeout=_STOP_CHECK):
                            if notify.payload == self._table_name:
                                self._fire()
            except Exception as exc:  # a listener that died would leave readers polling
                if self._stop.is_set():  # closed while connecting: nothing to report
                    return
                self._lost(exc)
                self._fire()
                self._stop.wait(self._pause())

    def close(self) -> None:
        """Stop listening (waiting readers then only poll)."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_CLOSE_WAIT)
        self._fire()


class AsyncWakeups(_Base):
    """Async wake-ups: a task of the running event loop listens and fires waiting tickets.

    One loop at a time: used under another loop (another ``asyncio.run``), it starts
    afresh there; two loops in two threads at once are not supported."""

    def __init__(self, target: object, table_name: str, *, listen: bool = True) -> None:
        super().__init__(target, table_name, listen=listen)
        self._ticket: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _in_this_loop(self) -> bool:
        """Start afresh in a loop other than the last one (a feed used again under another
        ``asyncio.run``): an ``asyncio.Event`` belongs to the loop that first waited on it,
        and the listener task died with its loop. False when that happened now."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is self._loop:
            return True
        self._loop, self._ticket, self._task = loop, None, None
        return False

    def ticket(self) -> asyncio.Event:
        """Take a ticket before reading."""
        self._in_this_loop()
        if self._ticket is None:
            self._ticket = asyncio.Event()
        return self._ticket

    async def wait(self, ticket: asyncio.Event, timeout: float) -> bool:
        """Sleep until ``ticket`` fires or ``timeout`` seconds pass; True when it fired.

        The first wait starts listening in the running loop, and returns as soon as it
        listens (what was notified before was missed).
        """
        if not self._in_this_loop():
            ticket = self.ticket()  # the one given belongs to the other loop
        if self._listen and self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="eventlog-feed-listener"
            )
        try:
            await asyncio.wait_for(ticket.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _fire(self) -> None:
        fired, self._ticket = self._ticket, asyncio.Event()
        if fired is not None:
            fired.set()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        engine = self._engine
        if not isinstance(engine, AsyncEngine) or not _pooled(engine):
            return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        # Out of the pool for good (closed here, never returned, when the listener ends).
        proxied = await engine.raw_connection()
        conn: psycopg.AsyncConnection[Any] = proxied.driver_connection  # type: ignore[assignment]
        proxied.detach()
        try:
            await conn.rollback()
            await conn.set_autocommit(True)
            await conn.execute(_NAME_IT)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _run(self) -> None:
        while not self._closed:
            try:
                conn = await self._connect()
                async with conn:
                    for statement in _idle_for_good(conn.info):
                        await conn.execute(statement)
                    _keep_alive(conn.fileno(), conn.info.get_parameters())
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    self._failures = 0
                    self._fire()
                    async for notify in conn.notifies():
                        if notify.payload == self._table_name:
                            self._fire()
            except Exception as exc:  # a listener that died would leave readers polling
                self._lost(exc)
                self._fire()
                await asyncio.sleep(self._pause())

    async def aclose(self) -> None:
        """Stop listening (waiting readers then only poll)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self._fire()
