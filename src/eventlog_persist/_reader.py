"""``EventLogReader`` and ``AsyncEventLogReader``: timelines and counts over `queries`."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Generic, Literal

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper, Session

from eventlog_persist._model import EventLogMixin, KeyT
from eventlog_persist._read_direct import (
    ENGINE_EVENTS,
    EXECUTE_EVENTS,
    direct_sql,
    driver_sql,
    fetch,
    fetch_autocommit,
)
from eventlog_persist._read_sql import (
    DEFAULT_PAGE_SIZE,
    PreparedQuery,
    TimelineQuery,
    bucket_query,
    count_query,
    event_query,
    event_table,
    timeline_query,
    token_usage_query,
    total_query,
)
from eventlog_persist._read_types import (
    BucketCount,
    CalendarUnit,
    CountField,
    EventFilter,
    EventRecord,
    GroupCount,
    Order,
    Page,
    TokenGroup,
    TokenUsage,
    Unscoped,
    event_records,
)
from eventlog_persist._urls import shown
from eventlog_persist.exceptions import ConfigurationError, ValidationError

__all__ = ["AsyncEventLogReader", "EventLogReader"]


class _Statements:
    """What both readers build: one statement per call, from the pure functions in queries."""

    __slots__ = ("_bind_arguments", "_table")

    def __init__(self, model: type[EventLogMixin[Any]]) -> None:
        self._table = event_table(model)
        # A Session routes by mapper (``Session(binds={EventLog: engine})``, or a bind per
        # Base class); a reflected Table routes by the table itself.
        mapper = getattr(model, "__mapper__", None)
        self._bind_arguments: dict[str, Any] = (
            {"mapper": mapper} if isinstance(mapper, Mapper) else {"clause": self._table}
        )

    def _timeline(
        self,
        method: str,
        column: Literal["session_id", "user_id", "project_id", "agent_id"],
        key: object,
        **options: Any,
    ) -> TimelineQuery:
        if column in ("session_id", "agent_id") and options["user_id"] is None:
            raise _owner_required(method, column)
        return timeline_query(self._table, column=column, key=key, **options)

    def _event(self, event_id: object, user_id: object) -> PreparedQuery:
        if user_id is None:
            raise _owner_required("event", "event_id")
        return event_query(self._table, event_id, user_id=user_id)

    def _total(self, **options: Any) -> PreparedQuery:
        return total_query(self._table, **options)

    def _counts(self, field: CountField, **options: Any) -> PreparedQuery:
        return count_query(self._table, field, **options)

    def _buckets(self, bucket: timedelta | CalendarUnit, **options: Any) -> PreparedQuery:
        return bucket_query(self._table, bucket, **options)

    def _tokens(self, **options: Any) -> PreparedQuery:
        return token_usage_query(self._table, **options)


def _owner_required(method: str, key: str) -> ValidationError:
    return ValidationError(
        f"{method}() got user_id=None; pass the id of the user who owns the {key[:-3]}, so one "
        "user can never read another's events, or user_id=UNSCOPED in operator tools that may "
        "read every user's events"
    )


def _total(rows: Sequence[Any]) -> int:
    (count,) = rows[0]
    return int(count)


def _one_record(rows: Sequence[Any]) -> EventRecord[Any] | None:
    return event_records(rows)[0] if rows else None


def _group_counts(rows: Sequence[Any]) -> list[GroupCount]:
    return [GroupCount(key, count) for key, count in rows]


def _bucket_counts(rows: Sequence[Any]) -> list[BucketCount]:
    return [BucketCount(start, count) for start, count in rows]


def _token_usages(rows: Sequence[Any]) -> list[TokenUsage[Any]]:
    # The sums are NUMERIC (Decimal), whole numbers by construction: exact as int.
    return [
        TokenUsage(agent, model, int(input_tokens), int(output_tokens), events)
        for agent, model, input_tokens, output_tokens, events in rows
    ]


class EventLogReader(_Statements, Generic[KeyT]):
    """Read a host's event log: timelines page by page, and counts for dashboards.

    Every timeline is scoped: a user's or a project's timeline by its own key, a session's or
    an agent's by the owning user too (``user_id=``), so a request handler that passes the
    signed-in user's id cannot leak another user's events. Every timeline narrows by the
    other keys too (``agent_id=``, ``session_id=``, ...), and `count` gives its total with
    the same keywords. Each call runs one indexed statement; see ``docs/reading.md`` for
    which index serves which call.

    Args:
        model: The host's ``EventLog`` model class.
        bind: An ``Engine`` (a pooled connection per call, its one statement run in
            autocommit mode), or a ``Connection`` or ORM ``Session`` whose transaction the
            reads join; a Session picks the bind mapped to ``model``.

    Raises:
        ConfigurationError: ``bind`` or ``model`` cannot be used.

    Example:
        >>> reader = EventLogReader(EventLog, engine)  # doctest: +SKIP
        >>> page = reader.session_timeline(session_id, user_id=user_id)  # doctest: +SKIP
    """

    __slots__ = ("_bind",)

    def __init__(
        self, model: type[EventLogMixin[KeyT]], bind: Engine | Connection | Session
    ) -> None:
        if not isinstance(bind, (Engine, Connection, Session)):
            fix = "use AsyncEventLogReader for async binds" if _is_async(bind) else _BIND_FIX
            raise ConfigurationError(
                f"EventLogReader needs a sqlalchemy Engine, Connection or Session, got "
                f"{shown(bind)}; {fix}"
            )
        super().__init__(model)
        self._bind = bind

    def _all(self, query: PreparedQuery) -> Sequence[Any]:
        bind = self._bind
        if isinstance(bind, Engine):
            with bind.connect() as connection:
                # One statement needs no transaction of its own: autocommit spares the BEGIN
                # and the ROLLBACK on return to the pool, two round trips per call.
                # A connection just made has no listeners of its own: the engine's are all.
                sql = direct_sql(connection, query, bind.dispatch, ENGINE_EVENTS)
                if sql is not None:
                    return fetch_autocommit(connection, *sql)
                connection.execution_options(isolation_level="AUTOCOMMIT")
                return _run(connection, query)
        if isinstance(bind, Session):
            return _run(bind.connection(bind_arguments=self._bind_arguments), query)
        return _run(bind, query)

    def session_timeline(
        self,
        session_id: KeyT,
        *,
        user_id: KeyT | Unscoped,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: EventFilter | None = None,
        order: Order = "newest",
        limit: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Page[KeyT]:
        """Return one page of a chat session's events.

        Args:
            session_id: The session.
            user_id: The user who owns the session: events of other users are never
                returned. ``UNSCOPED`` reads every user's events (operator tools only).
            project_id: Only events of this project.
            agent_id: Only events of this agent.
            since: Only events created at or after this instant (time-zone aware): the
                partitioned layout then reads only the partitions from there on.
            until: Only events created before this instant (time-zone aware, exclusive).
            filters: Extra conditions; all must hold (its range intersects the one above).
            order: ``"newest"`` first (default) or ``"oldest"`` first.
            limit: Events per page, 1 to `MAX_PAGE_SIZE`.
            offset: Events to skip before the page, 0 to `MAX_OFFSET`, for hosts whose
                API is limit/offset; each call reads and discards them, so prefer cursors.
                Not with ``cursor``; the page's ``next_cursor`` continues after it.
            cursor: ``next_cursor`` of the previous page of this same call; ``None`` for
                the first page.

        Returns:
            The page; ``next_cursor`` is ``None`` on the last one.

        Raises:
            ValidationError: An argument is not valid (``user_id`` is ``None``, say).
            InvalidCursorError: The cursor is garbled, altered or from another call.

        .. versionchanged:: 0.3.0
           ``offset``; ``since`` and ``until``; narrowing by ``project_id``, ``agent_id``.
        """
        query = self._timeline(
            "session_timeline",
            "session_id",
            session_id,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            since=since,
            until=until,
            filters=filters,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return query.page(self._all(query.query))

    def user_timeline(
        self,
        user_id: KeyT,
        *,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: EventFilter | None = None,
        order: Order = "newest",
        limit: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Page[KeyT]:
        """Return one page of a user's events, optionally narrowed.

        Args:
            user_id: The user.
            project_id: Only events of this project.
            agent_id: Only events of this agent.
            session_id: Only events of this chat session.
            since: Only events created at or after this instant (time-zone aware): the
                partitioned layout then reads only the partitions from there on.
            until: Only events created before this instant (time-zone aware, exclusive).
            filters: Extra conditions; all must hold (its range intersects the one above).
            order: ``"newest"`` first (default) or ``"oldest"`` first.
            limit: Events per page, 1 to `MAX_PAGE_SIZE`.
            offset: Events to skip before the page, 0 to `MAX_OFFSET`, for hosts whose
                API is limit/offset; each call reads and discards them, so prefer cursors.
                Not with ``cursor``; the page's ``next_cursor`` continues after it.
            cursor: ``next_cursor`` of the previous page of this same call; ``None`` for
                the first page.

        Returns:
            The page; ``next_cursor`` is ``None`` on the last one.

        Raises:
            ValidationError: An argument is not valid.
            InvalidCursorError: The cursor is garbled, altered or from another call.

        .. versionchanged:: 0.3.0
           ``offset``; ``since`` and ``until``; narrowing by ``agent_id``, ``session_id``.
        """
        query = self._timeline(
            "user_timeline",
            "user_id",
            user_id,
            user_id=None,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            since=since,
            until=until,
            filters=filters,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return query.page(self._all(query.query))

    def project_timeline(
        self,
        project_id: KeyT,
        *,
        user_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: EventFilter | None = None,
        order: Order = "newest",
        limit: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Page[KeyT]:
        """Return one page of a project's events, optionally narrowed.

        Args:
            project_id: The project; it is the scope, so check that the caller may read it.
            user_id: Only events of this user: pass the signed-in user's id to show
                them only their own events.
            agent_id: Only events of this agent.
            session_id: Only events of this chat session.
            since: Only events created at or after this instant (time-zone aware): the
                partitioned layout then reads only the partitions from there on.
            until: Only events created before this instant (time-zone aware, exclusive).
            filters: Extra conditions; all must hold (its range intersects the one above).
            order: ``"newest"`` first (default) or ``"oldest"`` first.
            limit: Events per page, 1 to `MAX_PAGE_SIZE`.
            offset: Events to skip before the page, 0 to `MAX_OFFSET`, for hosts whose
                API is limit/offset; each call reads and discards them, so prefer cursors.
                Not with ``cursor``; the page's ``next_cursor`` continues after it.
            cursor: ``next_cursor`` of the previous page of this same call; ``None`` for
                the first page.

        Returns:
            The page; ``next_cursor`` is ``None`` on the last one.

        Raises:
            ValidationError: An argument is not valid.
            InvalidCursorError: The cursor is garbled, altered or from another call.

        .. versionchanged:: 0.3.0
           ``offset``; ``since`` and ``until``; narrowing by ``agent_id``, ``session_id``.
        """
        query = self._timeline(
            "project_timeline",
            "project_id",
            project_id,
            user_id=user_id,
            agent_id=agent_id,
            session_id=session_id,
            since=since,
            until=until,
            filters=filters,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return query.page(self._all(query.query))

    def agent_timeline(
        self,
        agent_id: KeyT,
        *,
        user_id: KeyT | Unscoped,
        project_id: KeyT | None = None,
        session_id: KeyT | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: EventFilter | None = None,
        order: Order = "newest",
        limit: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Page[KeyT]:
        """Return one page of an agent's events.

        Args:
            agent_id: The agent.
            user_id: The user who owns the agent; ``UNSCOPED`` reads every user's events
                (operator tools only).
            project_id: Only events of this project.
            session_id: Only events of this chat session.
            since: Only events created at or after this instant (time-zone aware): the
                partitioned layout then reads only the partitions from there on.
            until: Only events created before this instant (time-zone aware, exclusive).
            filters: Extra conditions; all must hold (its range intersects the one above).
            order: ``"newest"`` first (default) or ``"oldest"`` first.
            limit: Events per page, 1 to `MAX_PAGE_SIZE`.
            offset: Events to skip before the page, 0 to `MAX_OFFSET`, for hosts whose
                API is limit/offset; each call reads and discards them, so prefer cursors.
                Not with ``cursor``; the page's ``next_cursor`` continues after it.
            cursor: ``next_cursor`` of the previous page of this same call; ``None`` for
                the first page.

        Returns:
            The page; ``next_cursor`` is ``None`` on the last one.

        Raises:
            ValidationError: An argument is not valid (``user_id`` is ``None``, say).
            InvalidCursorError: The cursor is garbled, altered or from another call.

        .. versionchanged:: 0.3.0
           ``offset``; ``since`` and ``until``; narrowing by ``project_id``, ``session_id``.
        """
        query = self._timeline(
            "agent_timeline",
            "agent_id",
            agent_id,
            user_id=user_id,
            project_id=project_id,
            session_id=session_id,
            since=since,
            until=until,
            filters=filters,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return query.page(self._all(query.query))

    def event(self, event_id: uuid.UUID, *, user_id: KeyT | Unscoped) -> EventRecord[KeyT] | None:
        """Return one event by its id, or None when the user has no such event.

        Scoped like the session timeline: an event of another user is never returned.
        Ids the package mints record their event's time (`new_event_id`), so the lookup
        reads one partition of the partitioned layout; an event whose id was chosen by the
        caller and records another time costs a look into every partition.

        Args:
            event_id: The event's id.
            user_id: The user who owns the event. ``UNSCOPED`` finds any user's event
                (operator tools only).

        Returns:
            The event, or None.

        Raises:
            ValidationError: ``event_id`` is not a UUID, or ``user_id`` is ``None`` or not a
                key.

        .. versionadded:: 0.3.0
        """
        query = self._event(event_id, user_id)
        return _one_record(self._all(query))

    def count(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: KeyT | None = None,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        filters: EventFilter | None = None,
    ) -> int:
        """Count the events of a scope: the ``total`` of a timeline with the same arguments.

        Takes the scope and filters that the timelines take, as keywords: the project
        timeline ``project_timeline(p, user_id=u, agent_id=a, filters=f)`` has
        ``count(project_id=p, user_id=u, agent_id=a, filters=f)`` events. It reads every
        matching index entry, so its cost grows with the scope's size; give a range for
        large scopes.

        Args:
            since: Start of the range (inclusive, time-zone aware); ``None``: no start.
            until: End of the range (exclusive, time-zone aware); ``None``: no end.
            user_id: The user whose events count; give it, ``project_id``, or both.
            project_id: The project whose events count.
            agent_id: Only events of this agent (narrows the scope).
            session_id: Only events of this chat session (narrows the scope; pass its
                owner as ``user_id``).
            filters: Extra conditions; all must hold (its range intersects the one above).

        Returns:
            How many events match.

        Raises:
            ValidationError: No scope (``user_id`` or ``project_id``), a bad key, an empty
                or naive range, or ``filters`` that are not an `EventFilter`.

        .. versionadded:: 0.3.0
        """
        query = self._total(
            since=since,
            until=until,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            filters=filters,
        )
        return _total(self._all(query))

    def count_by(
        self,
        field: CountField,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: KeyT | None = None,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        filters: EventFilter | None = None,
    ) -> list[GroupCount]:
        """Count events per ``event_type``, ``tool_name``, ``error_code`` or ``agent_id``.

        Args:
            field: The column to group by; events where it is NULL count under key ``None``.
            since: Start of the range (inclusive, time-zone aware); ``None``: no start.
            until: End of the range (exclusive, time-zone aware); ``None``: no end.
            user_id: The user whose events count; give it, ``project_id``, or both.
            project_id: The project whose events count.
            agent_id: Only events of this agent (narrows the scope).
            session_id: Only events of this chat session (narrows the scope; pass its
                owner as ``user_id``).
            filters: Extra conditions; all must hold (its range intersects the one above).

        Returns:
            One `GroupCount` per value, largest count first.

        Raises:
            ValidationError: No scope, an empty or naive range, or an unknown ``field``.

        .. versionchanged:: 0.3.0
           ``since`` and ``until`` are optional; ``session_id`` narrows the scope.
        """
        query = self._counts(
            field,
            since=since,
            until=until,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            filters=filters,
        )
        return _group_counts(self._all(query))

    def count_by_bucket(
        self,
        bucket: timedelta | CalendarUnit,
        *,
        since: datetime,
        until: datetime,
        user_id: KeyT | None = None,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        filters: EventFilter | None = None,
        time_zone: str = "UTC",
    ) -> list[BucketCount]:
        """Count events per time bucket; buckets with no event have no row.

        Args:
            bucket: A ``timedelta`` up to 1000 years (``date_bin``, aligned to UTC) or
                ``"hour"``, ``"day"``, ``"week"`` (from Monday) or ``"month"``
                (``date_trunc`` in ``time_zone``).
            since: Start of the range (inclusive, time-zone aware).
            until: End of the range (exclusive, time-zone aware).
            user_id: The user whose events count; give it, ``project_id``, or both.
            project_id: The project whose events count.
            agent_id: Only events of this agent (narrows the scope).
            session_id: Only events of this chat session (narrows the scope; pass its
                owner as ``user_id``).
            filters: Extra conditions; all must hold.
            time_zone: IANA zone whose midnights cut calendar buckets (not ``"CET"``,
                ``"MET"``, ``"EET"`` or ``"WET"``, which PostgreSQL reads as fixed offsets:
                pass a region); ``"UTC"`` for a ``timedelta`` bucket.

        Returns:
            One `BucketCount` per non-empty bucket, oldest first.

        Raises:
            ValidationError: No scope, no or an empty range, or a bad bucket or time zone.

        .. versionchanged:: 0.3.0
           ``session_id`` narrows the scope; a ``timedelta`` bucket is at most 1000 years;
           ``"CET"``, ``"MET"``, ``"EET"``, ``"WET"`` and ``"localtime"`` are refused.
        """
        query = self._buckets(
            bucket,
            since=since,
            until=until,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            filters=filters,
            time_zone=time_zone,
        )
        return _bucket_counts(self._all(query))

    def token_usage(
        self,
        *,
        since: datetime,
        until: datetime,
        user_id: KeyT | None = None,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        filters: EventFilter | None = None,
        by: Iterable[TokenGroup] = ("agent_id", "model"),
    ) -> list[TokenUsage[KeyT]]:
        """Sum the tokens that GenAI events reported, per agent and/or model, over a range.

        Reads the payload keys of the OpenTelemetry GenAI conventions, as `genai_payload`
        writes them: ``gen_ai.usage.input_tokens`` and ``gen_ai.usage.output_tokens`` for
        the counts, ``gen_ai.response.model`` (else ``gen_ai.request.model``) for the model.
        Only JSON numbers count, tested with ``jsonb_typeof`` before any cast, and only
        whole numbers >= 0 among them: a count stored as a string (``"12"``), a fraction, a
        negative number, ``null`` or a missing key counts as no value, so a bad payload
        from another writer never fails the call. Events with neither count are left out;
        an event with one counts 0 for the other. Scoped and served by an index as
        `count_by_bucket` is.

        Args:
            since: Start of the range (inclusive, time-zone aware).
            until: End of the range (exclusive, time-zone aware).
            user_id: The user whose events count; give it, ``project_id``, or both.
            project_id: The project whose events count.
            agent_id: Only events of this agent (narrows the scope).
            session_id: Only events of this chat session (narrows the scope; pass its
                owner as ``user_id``).
            filters: Extra conditions; all must hold (its range intersects the one above).
            by: What to group by: ``"agent_id"``, ``"model"``, both (the default), or
                ``()`` for one total of the scope. A field not grouped by is ``None`` in
                the results.

        Returns:
            One `TokenUsage` per group, most tokens (input + output) first; none when no
            event in the range reported a count.

        Raises:
            ValidationError: No scope, no or an empty or naive range, a bad key, or a
                ``by`` that is not a tuple of ``"agent_id"`` and ``"model"``.

        .. versionadded:: 0.3.0
        """
        query = self._tokens(
            since=since,
            until=until,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            filters=filters,
            by=by,
        )
        return _token_usages(self._all(query))


class AsyncEventLogReader(_Statements, Generic[KeyT]):
    """The asyncio twin of `EventLogReader`: same methods, same statements, awaited.

    Args:
        model: The host's ``EventLog`` model class.
        bind: An ``AsyncEngine``, ``AsyncConnection`` or ``AsyncSession``.

    Raises:
        ConfigurationError: ``bind`` or ``model`` cannot be used.
    """

    __slots__ = ("_bind",)

    def __init__(
        self,
        model: type[EventLogMixin[KeyT]],
        bind: AsyncEngine | AsyncConnection | AsyncSession,
    ) -> None:
        if not _is_async(bind):
            sync = isinstance(bind, (Engine, Connection, Session))
            fix = "use EventLogReader for sync binds" if sync else _ASYNC_BIND_FIX
            raise ConfigurationError(
                f"AsyncEventLogReader needs a sqlalchemy AsyncEngine, AsyncConnection or "
                f"AsyncSession, got {shown(bind)}; {fix}"
            )
        super().__init__(model)
        self._bind = bind

    async def _all(self, query: PreparedQuery) -> Sequence[Any]:
        bind = self._bind
        if isinstance(bind, AsyncEngine):
            async with bind.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                return await _run_async(connection, query)
        if isinstance(bind, AsyncSession):
            connection = await bind.connection(bind_arguments=self._bind_arguments)
            return await _run_async(connection, query)
        return await _run_async(bind, query)

    async def session_timeline(
        self,
        session_id: KeyT,
        *,
        user_id: KeyT | Unscoped,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: EventFilter | None = None,
        order: Order = "newest",
        limit: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Page[KeyT]:
        """See `EventLogReader.session_timeline`."""
        query = self._timeline(
            "session_timeline",
            "session_id",
            session_id,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            since=since,
            until=until,
            filters=filters,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return query.page(await self._all(query.query))

    async def user_timeline(
        self,
        user_id: KeyT,
        *,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: EventFilter | None = None,
        order: Order = "newest",
        limit: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Page[KeyT]:
        """See `EventLogReader.user_timeline`."""
        query = self._timeline(
            "user_timeline",
            "user_id",
            user_id,
            user_id=None,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            since=since,
            until=until,
            filters=filters,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return query.page(await self._all(query.query))

    async def project_timeline(
        self,
        project_id: KeyT,
        *,
        user_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: EventFilter | None = None,
        order: Order = "newest",
        limit: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Page[KeyT]:
        """See `EventLogReader.project_timeline`."""
        query = self._timeline(
            "project_timeline",
            "project_id",
            project_id,
            user_id=user_id,
            agent_id=agent_id,
            session_id=session_id,
            since=since,
            until=until,
            filters=filters,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return query.page(await self._all(query.query))

    async def agent_timeline(
        self,
        agent_id: KeyT,
        *,
        user_id: KeyT | Unscoped,
        project_id: KeyT | None = None,
        session_id: KeyT | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: EventFilter | None = None,
        order: Order = "newest",
        limit: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Page[KeyT]:
        """See `EventLogReader.agent_timeline`."""
        query = self._timeline(
            "agent_timeline",
            "agent_id",
            agent_id,
            user_id=user_id,
            project_id=project_id,
            session_id=session_id,
            since=since,
            until=until,
            filters=filters,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return query.page(await self._all(query.query))

    async def event(
        self, event_id: uuid.UUID, *, user_id: KeyT | Unscoped
    ) -> EventRecord[KeyT] | None:
        """See `EventLogReader.event`."""
        query = self._event(event_id, user_id)
        return _one_record(await self._all(query))

    async def count(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: KeyT | None = None,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        filters: EventFilter | None = None,
    ) -> int:
        """See `EventLogReader.count`."""
        query = self._total(
            since=since,
            until=until,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            filters=filters,
        )
        return _total(await self._all(query))

    async def count_by(
        self,
        field: CountField,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: KeyT | None = None,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        filters: EventFilter | None = None,
    ) -> list[GroupCount]:
        """See `EventLogReader.count_by`."""
        query = self._counts(
            field,
            since=since,
            until=until,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            filters=filters,
        )
        return _group_counts(await self._all(query))

    async def count_by_bucket(
        self,
        bucket: timedelta | CalendarUnit,
        *,
        since: datetime,
        until: datetime,
        user_id: KeyT | None = None,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        filters: EventFilter | None = None,
        time_zone: str = "UTC",
    ) -> list[BucketCount]:
        """See `EventLogReader.count_by_bucket`."""
        query = self._buckets(
            bucket,
            since=since,
            until=until,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            filters=filters,
            time_zone=time_zone,
        )
        return _bucket_counts(await self._all(query))

    async def token_usage(
        self,
        *,
        since: datetime,
        until: datetime,
        user_id: KeyT | None = None,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        session_id: KeyT | None = None,
        filters: EventFilter | None = None,
        by: Iterable[TokenGroup] = ("agent_id", "model"),
    ) -> list[TokenUsage[KeyT]]:
        """See `EventLogReader.token_usage`."""
        query = self._tokens(
            since=since,
            until=until,
            user_id=user_id,
            project_id=project_id,
            agent_id=agent_id,
            session_id=session_id,
            filters=filters,
            by=by,
        )
        return _token_usages(await self._all(query))


def _run(connection: Connection, query: PreparedQuery) -> Sequence[Any]:
    # In a transaction already (the caller's, or the one the first statement began): the
    # DBAPI cursor has nothing to begin. Otherwise SQLAlchemy's autobegin must see it.
    if connection.in_transaction():
        sql = direct_sql(connection, query, connection.dispatch, EXECUTE_EVENTS)
        if sql is not None:
            return fetch(connection, *sql)
    sql = driver_sql(query, connection.dialect, connection.get_execution_options())
    if sql is None:
        return connection.execute(query.statement(), query.params).all()
    return connection.exec_driver_sql(*sql).all()


async def _run_async(connection: AsyncConnection, query: PreparedQuery) -> Sequence[Any]:
    started = connection.sync_connection
    options = (started or connection.sync_engine).get_execution_options()
    sql = driver_sql(query, connection.dialect, options)
    if sql is None:
        result = await connection.execute(query.statement(), query.params)
    else:
        result = await connection.exec_driver_sql(*sql)
    rows: Sequence[Any] = result.all()
    return rows


_BIND_FIX: Final = (
    "the reader runs on the application's own engine or session: pass it (an engine made "
    "with create_engine(url) for a URL)"
)
_ASYNC_BIND_FIX: Final = _BIND_FIX.replace("create_engine(", "create_async_engine(")


def _is_async(bind: object) -> bool:
    return isinstance(bind, (AsyncEngine, AsyncConnection, AsyncSession))
