"""The public API as a host writes it; type-checked by mypy --strict in CI, never run.

``assert_type`` pins the types a host relies on; a line with ``# type: ignore[code]`` is a
misuse that must stay a type error (mypy's ``warn_unused_ignores`` fails if it is not).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import assert_type

import msgspec
from alembic.config import Config
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import eventlog_persist
from eventlog_persist import (
    ANY_ERROR,
    DEFAULT_DETECTORS,
    DEFAULT_REDACT_KEYS,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    UNSCOPED,
    ApprovalStatus,
    AuditReport,
    AuditSealer,
    BucketCount,
    BufferedWriter,
    BulkResult,
    ConsumerStatus,
    DropResult,
    EventFeed,
    EventFieldRules,
    EventFilter,
    EventLogMixin,
    EventLogReader,
    EventRecord,
    EventType,
    EventWriter,
    FeedBatch,
    FeedBlocker,
    FileAnchor,
    ForeignKeyTargets,
    GroupCount,
    JSONValue,
    LastError,
    LogAnchor,
    NewEvent,
    Page,
    PartitionInfo,
    PayloadPolicy,
    PreparedPayload,
    PurgeResult,
    RetryPolicy,
    Seal,
    SealAnchor,
    Spool,
    TokenUsage,
    WriterCounters,
    WriterStats,
    audit_leaf_hash,
    check_setup,
    count_purgeable,
    drop_partitions,
    ensure_partitions,
    event_log_model,
    feed_status,
    genai_payload,
    include_name,
    include_object,
    list_partitions,
    new_event,
    prepare_payload,
    purge_events,
    seal_events,
    skip_partitions,
    verify_audit,
    write_events,
)
from eventlog_persist.exceptions import FeedDataLostError
from eventlog_persist.metrics import (
    MetricsRegistration,
    register_opentelemetry,
    register_prometheus,
)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)


class EventLog(EventLogMixin[uuid.UUID], Base):
    __eventlog_targets__ = ForeignKeyTargets(users="users")


class IntBase(DeclarativeBase):
    pass


class IntEventLog(EventLogMixin[int], IntBase):
    pass


class GeneratedBase(DeclarativeBase):
    pass


GeneratedIntEventLog = event_log_model(GeneratedBase, key_type=int)


class PartitionedBase(DeclarativeBase):
    pass


PartitionedEventLog = event_log_model(PartitionedBase, partitioned=True)


class FeedBase(DeclarativeBase):
    pass


FeedEventLog = event_log_model(FeedBase, feed=True)


class AuditBase(DeclarativeBase):
    pass


AuditEventLog = event_log_model(AuditBase, feed=True, audit=True)
assert_type(AuditEventLog, type[EventLogMixin[uuid.UUID]])


def leaf_of(engine: Engine) -> bytes:
    with engine.connect() as connection:
        row = connection.execute(text("SELECT *, payload::text AS payload FROM event_logs")).first()
    assert row is not None
    leaf = audit_leaf_hash(row._mapping)
    assert_type(leaf, bytes)
    return leaf


class FeedMixinEventLog(EventLogMixin[int], IntBase):
    __tablename__ = "feed_events"
    __eventlog_feed__ = True


def consume(engine: Engine) -> int:
    feed = EventFeed(FeedEventLog, engine, consumer="warehouse", lease=60, mode="horizon")
    assert_type(feed, EventFeed[uuid.UUID])
    assert_type(feed.register(start=datetime.now(UTC) - timedelta(days=1)), bool)
    feed.register(start="oldest")  # type: ignore[arg-type]
    batch = feed.fetch(limit=1000)
    assert_type(batch, FeedBatch[uuid.UUID])
    assert_type(batch.events, tuple[EventRecord[uuid.UUID], ...])
    feed.commit(batch)
    with engine.begin() as connection:
        feed.commit(batch, connection=connection)
    assert_type(batch.part, int)
    parted = EventFeed(FeedEventLog, engine, consumer="warehouse", parts=4, part=None)
    assert_type(parted.parts, int)
    feed.release()
    ints = EventFeed(FeedMixinEventLog, engine, consumer="c")
    ints.commit(batch)  # type: ignore[arg-type]
    xid: int | None = FeedEventLog(
        session_id=uuid.uuid4(), user_id=uuid.uuid4(), event_type="x"
    ).xid
    return len(batch.events) + (xid or 0)


def watch(engine: Engine) -> int:
    statuses = feed_status(FeedEventLog, engine, consumer="warehouse")
    assert_type(statuses, list[ConsumerStatus])
    status = statuses[0]
    assert_type(status.oldest_pending_age, timedelta | None)
    assert_type(status.holding_back, tuple[FeedBlocker, ...])
    pids = [blocker.pid for blocker in status.holding_back if blocker.pid is not None]
    feed_status(FeedEventLog, engine, "warehouse")  # type: ignore[call-arg]
    assert_type(status.lost_events, int)
    assert_type(status.lost_before, datetime | None)
    try:
        EventFeed(FeedEventLog, engine, consumer="warehouse").fetch()
    except FeedDataLostError as lost:
        assert_type(lost.lost_events, int)
        assert_type(lost.lost_by, str | None)
    return status.pending + status.held + len(pids)


def model_columns(session: Session, user: User, session_id: uuid.UUID) -> uuid.UUID:
    payload: JSONValue = {"text": "hi", "n": [1, 2.5, None]}
    event = EventLog(
        session_id=session_id,
        user_id=user.id,
        event_type="user_message",
        payload=payload,
        created_at=datetime.now(UTC),
    )
    session.add(event)
    agent: uuid.UUID | None = event.agent_id
    assert agent is None
    return event.id


def count_int_events(session: Session) -> int:
    event = GeneratedIntEventLog(session_id=1, user_id=2, event_type="error", error_code="x")
    session.add(event)
    key: int = event.session_id
    rows = session.scalars(
        select(GeneratedIntEventLog).where(GeneratedIntEventLog.user_id == key)
    ).all()
    return len(rows)


def setup_ok(config: Config) -> bool:
    keep: bool = include_name("event_logs", "table", {}) and include_object(
        None, "users", "table", True, None
    )
    keep = keep and skip_partitions("event_logs_p20261130", "table", {})
    location: str = eventlog_persist.MIGRATIONS_LOCATION
    return check_setup(config).ok and keep and bool(location)


def record(engine: Engine, session: Session, user: User, chat: uuid.UUID) -> None:
    writer = EventWriter(EventLog, retry=RetryPolicy(max_attempts=3), lock_timeout=2.0)
    assert_type(writer, EventWriter[EventLog, uuid.UUID])

    # In the caller's transaction: the host's own model comes back, not the mixin.
    row = writer.record(session, session_id=chat, user_id=user.id, event_type=EventType.TOOL_CALL)
    assert_type(row, EventLog)
    built = new_event(session_id=chat, user_id=user.id, event_type="user_message", payload="hi")
    assert_type(writer.record(session, built), EventLog)
    assert_type(writer.event(session_id=chat, user_id=user.id, event_type="x"), NewEvent)
    assert_type(msgspec.structs.replace(built, tool_name="search"), NewEvent)
    assert_type(built.payload_bytes, int)

    # Detached: the NewEvent comes back, whether given fields or a built event.
    detached = writer.record_detached(
        engine, session_id=chat, user_id=user.id, event_type="error", error_code="timeout"
    )
    assert_type(detached, NewEvent)
    assert_type(writer.record_detached(engine, built), NewEvent)

    # A key of the wrong type is a type error.
    writer.event(session_id=1, user_id=user.id, event_type="x")  # type: ignore[arg-type]
    writer.record(session, session_id=1, user_id=user.id, event_type="x")  # type: ignore[call-overload]
    writer.record_detached(engine, session_id=chat, user_id=2, event_type="x")  # type: ignore[call-overload]


def int_keys(session: Session) -> None:
    writer = EventWriter(IntEventLog)
    assert_type(writer, EventWriter[IntEventLog, int])
    assert_type(writer.record(session, session_id=1, user_id=2, event_type="x"), IntEventLog)
    writer.record(session, session_id=uuid.uuid4(), user_id=2, event_type="x")  # type: ignore[call-overload]
    reader = EventLogReader(IntEventLog, session)
    assert_type(reader, EventLogReader[int])
    assert_type(reader.user_timeline(2), Page[int])


def bulk_and_buffered(engine: Engine, user: User, chat: uuid.UUID) -> int:
    events = [new_event(session_id=chat, user_id=user.id, event_type="tool_result")]
    result = write_events(EventLog, engine, events, batch_size=500)
    assert_type(result, BulkResult)
    assert_type(write_events(EventLog, "postgresql://localhost/app", iter(events)), BulkResult)
    patient = write_events(
        EventLog, engine, events, lock_timeout=1.5, retry=RetryPolicy(max_elapsed=60)
    )
    assert_type(patient.read_only_retries, int)
    write_events(EventLog, engine, events, lock_timeout=None)

    with BufferedWriter(
        EventLog, engine, when_full="drop_newest", handle_sigterm=False, lock_timeout=2.0
    ) as buffered:
        assert_type(buffered, BufferedWriter[uuid.UUID])
        queued = buffered.enqueue(session_id=chat, user_id=user.id, event_type="tool_result")
        assert_type(queued, NewEvent)
        assert_type(buffered.enqueue(events[0]), NewEvent)
        buffered.enqueue(session_id=chat, user_id=7, event_type="x")  # type: ignore[call-overload]
        assert_type(buffered.flush(timeout=5), bool)
    counters = buffered.counters
    assert_type(counters, WriterCounters)
    assert_type(buffered.close(), WriterCounters)
    assert_type(counters.read_only_retries, int)
    stats = buffered.stats
    assert_type(stats, WriterStats)
    assert_type(stats.counters, WriterCounters)
    assert_type(stats.oldest_queued_age, float | None)
    assert_type(stats.recent_batch_seconds_max, float | None)
    if stats.last_error is not None:
        assert_type(stats.last_error, LastError)
        assert_type(stats.last_error.sqlstate, str | None)
    registration = register_prometheus(buffered, registry=CollectorRegistry())
    assert_type(registration, MetricsRegistration)
    registration.close()
    register_prometheus({"api": buffered}).close()
    register_prometheus({"api": 1})  # type: ignore[dict-item]
    register_opentelemetry(buffered, meter_provider=MeterProvider()).close()
    spool = Spool("event-spool", fsync=0.05, max_bytes=256 * 1024 * 1024)
    Spool("event-spool", fsync="sometimes")  # type: ignore[arg-type]
    with BufferedWriter(EventLog, engine, spool=spool) as spooled:
        spooled.enqueue(events[0])
    left: int = spooled.counters.spilled + spooled.counters.replayed
    return result.written + counters.written + counters.dropped + left


def rules_and_payloads(value: dict[str, object]) -> NewEvent:
    rules = EventFieldRules(event_types=EventType, approval_statuses={"granted"})
    EventFieldRules(tool_names=("search",), error_codes=frozenset({"timeout"}))
    EventFieldRules(max_future=timedelta(minutes=5))
    assert_type(EventFieldRules(max_future=None).max_future, timedelta | None)
    EventFieldRules(max_future=300)  # type: ignore[arg-type]
    policy = PayloadPolicy(max_bytes=64 * 1024, oversize="truncate", redact_keys=frozenset())
    prepared = prepare_payload(value, policy=policy)
    assert_type(prepared, PreparedPayload)
    assert_type(DEFAULT_DETECTORS, frozenset[str])
    PayloadPolicy(redact_keys=DEFAULT_REDACT_KEYS | {"pin"}, detectors=DEFAULT_DETECTORS - {"jwt"})
    PayloadPolicy(detectors=["jwt"])  # type: ignore[arg-type]
    text: str = prepared.json_text
    genai = genai_payload(value, request_model="gpt-4o", input_tokens=12, output_tokens=3)
    assert_type(genai, dict[str, object])
    genai_payload(provider="openai", operation_name=EventType.CHAT, tool_call_id="call_1")
    genai_payload(input_tokens="12")  # type: ignore[arg-type]
    genai_payload(input_token=12)  # type: ignore[call-arg]
    writer = EventWriter(EventLog, payload_policy=policy, field_rules=rules)
    return writer.event(
        session_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        event_type=EventType.APPROVAL_GRANTED,
        approval_status=ApprovalStatus.GRANTED,
        payload=text,
    )


def read(engine: Engine, session: Session, user: User, chat: uuid.UUID) -> list[str]:
    reader = EventLogReader(EventLog, engine)
    assert_type(reader, EventLogReader[uuid.UUID])
    page = reader.session_timeline(chat, user_id=user.id, limit=20)
    assert_type(page, Page[uuid.UUID])
    errors = reader.user_timeline(user.id, filters=EventFilter(error_code=ANY_ERROR))
    tools = reader.agent_timeline(
        uuid.uuid4(), user_id=UNSCOPED, filters=EventFilter(event_types={"tool_call"})
    )
    items = page.items + errors.items + tools.items
    assert_type(items, tuple[EventRecord[uuid.UUID], ...])
    if page.next_cursor is not None:
        items += reader.session_timeline(chat, user_id=user.id, cursor=page.next_cursor).items
    key: uuid.UUID = items[0].session_id
    reader.session_timeline(1, user_id=user.id)  # type: ignore[arg-type]

    in_session = EventLogReader(EventLog, session)
    since, until = datetime(2025, 1, 1, tzinfo=UTC), datetime.now(UTC)
    counts = in_session.count_by(
        "event_type",
        since=since,
        until=until,
        user_id=user.id,
        filters=EventFilter(event_types=["a", "b"]),
    )
    assert_type(counts, list[GroupCount])
    buckets = in_session.count_by_bucket(timedelta(hours=1), since=since, until=until, user_id=key)
    assert_type(buckets, list[BucketCount])
    by_day = in_session.count_by_bucket("day", since=since, until=until, project_id=key)

    # Narrowed timelines, offsets and totals: the same keywords for a page and its total.
    project, agent = uuid.uuid4(), uuid.uuid4()
    narrowed = reader.project_timeline(
        project, user_id=user.id, agent_id=agent, session_id=chat, limit=MAX_PAGE_SIZE, offset=10
    )
    assert_type(narrowed, Page[uuid.UUID])
    total = reader.count(project_id=project, user_id=user.id, agent_id=agent)
    assert_type(total, int)
    reader.user_timeline(user.id, agent_id=agent, session_id=chat, offset=MAX_OFFSET)
    reader.session_timeline(chat, user_id=UNSCOPED, project_id=project, agent_id=agent)
    reader.agent_timeline(agent, user_id=user.id, project_id=project, session_id=chat)
    assert_type(reader.count_by("agent_id", user_id=user.id), list[GroupCount])
    reader.count(user_id=user.id, session_id=1)  # type: ignore[arg-type]
    reader.user_timeline(user.id, offset="10")  # type: ignore[arg-type]
    reader.agent_timeline(agent, user_id=user.id, agent_id=agent)  # type: ignore[misc]

    # GenAI token usage: per agent and model by default, or by either, or one total.
    usage = reader.token_usage(since=since, until=until, project_id=project, user_id=user.id)
    assert_type(usage, list[TokenUsage[uuid.UUID]])
    assert_type(usage[0].agent_id, uuid.UUID | None)
    assert_type(usage[0].model, str | None)
    by_model = reader.token_usage(since=since, until=until, user_id=user.id, by=("model",))
    (total_tokens,) = reader.token_usage(since=since, until=until, user_id=user.id, by=())
    assert_type(total_tokens.input_tokens + total_tokens.output_tokens, int)
    reader.token_usage(since=since, until=until, user_id=user.id, by=("tool_name",))  # type: ignore[arg-type]
    reader.token_usage(until=until, user_id=user.id)  # type: ignore[call-arg]
    return (
        [item.event_type for item in items + narrowed.items]
        + [str(c.key) for c in counts]
        + [str(by_day), str(total)]
        + [str(group.model) for group in by_model]
    )


def retention(engine: Engine, user: User) -> int:
    cutoff = datetime.now(UTC) - timedelta(days=90)
    pending = count_purgeable(EventLog, engine, older_than=cutoff, user_id=user.id)
    assert_type(pending, int)
    purged = purge_events(EventLog, engine, older_than=cutoff, batch_size=1000, max_batches=5)
    assert_type(purged, PurgeResult)
    progress: list[int] = []
    purge_events(EventLog, engine, older_than=cutoff, on_batch=lambda done: done.deleted)
    purge_events(EventLog, engine, older_than=cutoff, on_batch=print, sleep=0.5)
    purge_events(EventLog, engine, older_than=cutoff, on_batch=lambda d: progress.append(d.batches))
    return pending - purged.deleted - sum(progress)


def partition_maintenance(engine: Engine) -> list[str]:
    created = ensure_partitions(EventLog, engine, ahead=4, interval="month", lock_timeout=None)
    assert_type(created, tuple[str, ...])
    ensure_partitions(EventLog, engine, interval="day")  # type: ignore[arg-type]
    found = list_partitions(EventLog, engine)
    assert_type(found, list[PartitionInfo])
    sizes = [p.total_bytes + (p.estimated_rows or 0) for p in found if not p.detach_pending]
    cutoff = datetime.now(UTC) - timedelta(days=90)
    result = drop_partitions(EventLog, engine, older_than=cutoff, keep_detached=True)
    assert_type(result, DropResult)
    drop_partitions(EventLog, engine, older_than=cutoff, concurrently=False, lock_timeout=1)
    with engine.connect() as connection:
        drop_partitions(EventLog, connection, older_than=cutoff)
    return [*created, *result.dropped, *result.detached, *result.finalized, str(sum(sizes))]


def audit(engine: Engine, tmp: str) -> list[str]:
    seal = seal_events(FeedEventLog, engine, chunk_size=512, anchor=LogAnchor("audit"))
    assert_type(seal, Seal | None)
    seal_events(FeedEventLog, engine, anchor=lambda s: print(s.anchor))
    heads: list[SealAnchor] = [] if seal is None else [seal.anchor]
    with AuditSealer(FeedEventLog, engine, interval=30, anchor=FileAnchor(tmp)) as sealer:
        assert_type(sealer.seal(), Seal | None)
    report = verify_audit(FeedEventLog, engine, anchors=[*heads, "1:" + "0" * 64])
    assert_type(report, AuditReport)
    AuditSealer(FeedEventLog, engine, interval="1m")  # type: ignore[arg-type]
    return [str(problem) for problem in report.problems] + [str(report.erasures["cascade"])]
