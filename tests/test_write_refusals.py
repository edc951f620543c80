"""Nothing invalid leaves the caller: every write path refuses a bad field with ValidationError.

A lone surrogate in a text column used to pass the checks; ``record`` then failed the host's
whole commit with ``UnicodeEncodeError``, and the host's own row was lost with it. A
``created_at`` of 9999-12-31 23:59 at UTC-12 (year 10000 in UTC) was stored, and every later
read of that timeline failed. Each bad input below is refused, on each path, before anything
is sent: the caller's own transaction commits, and no event row exists.
"""

from __future__ import annotations

import copy
import enum
import gc
import pickle
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from hostmodels import HostModels
from sqlalchemy import (
    BigInteger,
    Engine,
    Integer,
    SmallInteger,
    String,
    Uuid,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

from eventlog_persist import (
    ApprovalStatus,
    AsyncBufferedWriter,
    BufferedWriter,
    EventFieldRules,
    EventLogReader,
    EventType,
    EventWriter,
    NewEvent,
    PayloadPolicy,
    awrite_events,
    event_log_model,
    new_event,
    prepare_payload,
    write_events,
)
from eventlog_persist.exceptions import ConfigurationError, ValidationError

UTC_MINUS_12 = timezone(timedelta(hours=-12))

# (fields, the field the message starts with, a fragment of the message)
BAD = [
    pytest.param(
        {"tool_name": "search\ud800"},
        "tool_name",
        "lone surrogate (U+D800) at index 6",
        id="tool_name-surrogate",
    ),
    pytest.param(
        {"error_code": "\udcfftimeout"},
        "error_code",
        "lone surrogate (U+DCFF) at index 0",
        id="error_code-surrogate",
    ),
    pytest.param(
        {"approval_status": "pend\udc80ing"},
        "approval_status",
        "lone surrogate (U+DC80) at index 4",
        id="approval_status-surrogate",
    ),
    pytest.param(
        {"event_type": "tool\udc80call"},
        "event_type",
        "lone surrogate (U+DC80) at index 4",
        id="event_type-surrogate",
    ),
    pytest.param({"tool_name": "a\x00b"}, "tool_name", "NUL (U+0000) at index 1", id="NUL"),
    pytest.param(
        {"error_code": "E\x1b[31mRED"},
        "error_code",
        "control character (U+001B) at index 1",
        id="escape",
    ),
    pytest.param(
        {"approval_status": "ok\nno"},
        "approval_status",
        "line feed (U+000A) at index 2",
        id="newline",
    ),
    pytest.param({"tool_name": "x\ty"}, "tool_name", "tab (U+0009) at index 1", id="tab"),
    pytest.param({"tool_name": "x\x7fy"}, "tool_name", "DEL (U+007F) at index 1", id="DEL"),
    pytest.param(
        {"tool_name": "x\x85y"}, "tool_name", "control character (U+0085) at index 1", id="C1"
    ),
    pytest.param(
        {"error_code": "a\u2028b"},
        "error_code",
        "line separator (U+2028) at index 1",
        id="line-separator",
    ),
    pytest.param(
        {"created_at": datetime(9999, 12, 31, 23, 59, tzinfo=UTC_MINUS_12)},
        "created_at",
        "(after the year 9999 in UTC) is outside the times an event can have",
        id="year-10000-in-UTC",
    ),
    pytest.param(
        {"created_at": datetime.min.replace(tzinfo=UTC)},
        "created_at",
        "is outside the times an event can have",
        id="datetime-min",
    ),
    pytest.param(
        {"created_at": datetime.now(UTC) + timedelta(days=30)},
        "created_at",
        "ahead of the current time",
        id="far-future",
    ),
    pytest.param(
        {"created_at": datetime(2026, 1, 1)},
        "created_at must be a timezone-aware datetime",
        "",
        id="naive",
    ),
]


def seed(engine: Engine, models: HostModels) -> dict[str, Any]:
    with Session(engine) as session:
        user = models.User(id=models.new_key())
        session.add(user)
        session.flush()
        chat = models.ChatSession(id=models.new_key(), user_id=user.id)
        session.add(chat)
        session.commit()
        return {"session_id": chat.id, "user_id": user.id}


def events_stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(text("SELECT count(*) FROM event_logs")) or 0)


def users_named(engine: Engine, models: HostModels, name: str) -> int:
    with Session(engine) as session:
        query = select(func.count()).select_from(models.User).where(models.User.name == name)
        return int(session.scalar(query) or 0)


def refused(field: str, fragment: str, error: BaseException) -> None:
    """The error is a ValidationError that names the field and the problem, escaped."""
    assert isinstance(error, ValidationError), repr(error)
    message = str(error)
    assert message.startswith(field), message
    assert fragment in message, message
    message.encode("utf-8")  # no raw surrogate in the message: it can be logged as is
    assert message.isprintable()


@pytest_asyncio.fixture
async def async_engine(database_url: URL, host_engine: Engine) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize(("fields", "field", "fragment"), BAD)
def test_record_refuses_in_the_caller_and_the_hosts_own_row_still_commits(
    host_engine: Engine,
    host_models: HostModels,
    fields: dict[str, Any],
    field: str,
    fragment: str,
) -> None:
    """The host flow: its own row, an event recorded with it, one commit."""
    keys = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    with Session(host_engine) as session:
        session.add(host_models.User(id=host_models.new_key(), name="host row"))
        with pytest.raises(ValidationError) as caught:
            writer.record(session, **{**keys, "event_type": "x", **fields})
        session.commit()  # would raise, and lose the host row, had the event been added
    refused(field, fragment, caught.value)
    assert users_named(host_engine, host_models, "host row") == 1
    assert events_stored(host_engine) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(("fields", "field", "fragment"), BAD)
async def test_every_other_write_path_refuses_in_the_caller(
    host_engine: Engine,
    host_models: HostModels,
    async_engine: AsyncEngine,
    fields: dict[str, Any],
    field: str,
    fragment: str,
) -> None:
    keys = seed(host_engine, host_models)
    model = host_models.EventLog
    args: dict[str, Any] = {**keys, "event_type": "x", **fields}
    writer = EventWriter(model)
    errors: list[BaseException] = []

    def expect_refusal() -> Any:
        return pytest.raises(ValidationError)

    # Building the event: new_event, the writer's event(), and a NewEvent made by hand.
    for build in (lambda: new_event(**args), lambda: writer.event(**args)):
        with expect_refusal() as caught:
            build()
        errors.append(caught.value)
    # max_future is a rule of new_event and the writers; an event made by hand gets the
    # fixed checks only (see the last test).
    fixed = "ahead of the current time" not in fragment
    if fixed:
        good = new_event(**keys, event_type="x")
        by_hand = {name: fields.get(name, getattr(good, name)) for name in NEW_EVENT_FIELDS}
        with expect_refusal() as caught:
            NewEvent(**by_hand)
        errors.append(caught.value)
        with expect_refusal() as caught:
            msgspec.structs.replace(good, **fields)
        errors.append(caught.value)

    # record in an AsyncSession: the host's row commits.
    async with AsyncSession(async_engine) as session:
        session.add(host_models.User(id=host_models.new_key(), name="async host row"))
        with expect_refusal() as caught:
            writer.record(session, **args)
        errors.append(caught.value)
        await session.commit()
    assert users_named(host_engine, host_models, "async host row") == 1

    # Detached, sync and async.
    with expect_refusal() as caught:
        writer.record_detached(host_engine, **args)
    errors.append(caught.value)
    with expect_refusal() as caught:
        await writer.arecord_detached(async_engine, **args)
    errors.append(caught.value)

    # Buffered, thread and task: enqueue raises, the writer has nothing to write or report.
    with BufferedWriter(model, host_engine) as buffered:
        with expect_refusal() as caught:
            buffered.enqueue(**args)
        errors.append(caught.value)
    async with AsyncBufferedWriter(model, async_engine) as abuffered:
        with expect_refusal() as caught:
            await abuffered.enqueue(**args)
        errors.append(caught.value)
    for counters in (buffered.counters, abuffered.counters):
        assert (counters.written, counters.dead_lettered, counters.dropped) == (0, 0, 0)

    # Bulk: events come from new_event, so the bad one raises while the batch is gathered.
    def stream() -> Iterator[NewEvent]:
        yield new_event(**keys, event_type="fine")
        yield new_event(**args)

    with expect_refusal() as caught:
        write_events(model, host_engine, stream())
    errors.append(caught.value)
    with expect_refusal() as caught:
        await awrite_events(model, async_engine, stream())
    errors.append(caught.value)

    assert len(errors) == (11 if fixed else 9)
    for error in errors:
        refused(field, fragment, error)
    assert events_stored(host_engine) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fields", "named"),
    [
        pytest.param({"event_type": "x", "tool": "search"}, "tool", id="unknown-name"),
        pytest.param({"tool_name": "search"}, "event_type", id="event_type-missing"),
        # new_event's options: taken by the check before, then ignored (the writer's applied).
        pytest.param(
            {"event_type": "x", "payload_policy": PayloadPolicy(redact_keys={"pin"})},
            "'payload_policy': a writer applies its own payload_policy; give it to its "
            r"constructor, e.g. EventWriter\(EventLog, payload_policy=...\)",
            id="payload_policy",
        ),
        pytest.param(
            {"event_type": "x", "field_rules": EventFieldRules(), "payload_policy": None},
            "'field_rules': a writer applies its own field_rules and payload_policy",
            id="field_rules",
        ),
    ],
)
async def test_a_field_name_unknown_or_missing_is_a_type_error_naming_it(
    host_engine: Engine,
    host_models: HostModels,
    async_engine: AsyncEngine,
    fields: dict[str, Any],
    named: str,
) -> None:
    keys = seed(host_engine, host_models)
    model = host_models.EventLog
    args: dict[str, Any] = {**keys, **fields}
    writer = EventWriter(model)
    with pytest.raises(TypeError, match=named):
        writer.event(**args)
    with Session(host_engine) as session, pytest.raises(TypeError, match=named):
        writer.record(session, **args)
    with pytest.raises(TypeError, match=named):
        writer.record_detached(host_engine, **args)
    with BufferedWriter(model, host_engine) as buffered, pytest.raises(TypeError, match=named):
        buffered.enqueue(**args)
    async with AsyncBufferedWriter(model, async_engine) as abuffered:
        with pytest.raises(TypeError, match=named):
            await abuffered.enqueue(**args)
    for counters in (buffered.counters, abuffered.counters):
        assert (counters.written, counters.dead_lettered, counters.dropped) == (0, 0, 0)
    assert events_stored(host_engine) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"session_id": "abc"}, "session_id must be a uuid.UUID or int (the host's primary-key"),
        ({"user_id": 1.5}, "user_id must be a uuid.UUID or int (the host's primary-key"),
        ({"project_id": "p1"}, "project_id must be a uuid.UUID, int or None"),
        ({"agent_id": b"a1"}, "agent_id must be a uuid.UUID, int or None"),
        ({"id": "01890000-0000-7000-8000-000000000000"}, "id must be a uuid.UUID or None, got str"),
    ],
)
def test_a_wrong_id_or_key_given_to_an_event_is_refused_naming_it(
    host_models: HostModels, change: dict[str, Any], message: str
) -> None:
    key = uuid.uuid4()
    fields: dict[str, Any] = {"session_id": key, "user_id": key, "event_type": "x", **change}
    with pytest.raises(ValidationError) as caught:
        new_event(**fields)
    assert str(caught.value).startswith(message)
    with pytest.raises(ValidationError) as caught:
        EventWriter(host_models.EventLog).event(**fields)
    assert str(caught.value).startswith(message)


def test_optional_keys_take_none_and_the_hosts_int_keys() -> None:
    event = new_event(session_id=1, user_id=2, event_type="x", project_id=3, agent_id=None)
    assert (event.session_id, event.user_id, event.project_id, event.agent_id) == (1, 2, 3, None)


def test_a_writer_refuses_options_and_events_of_the_wrong_kind(host_models: HostModels) -> None:
    model = host_models.EventLog
    with pytest.raises(ConfigurationError, match="payload_policy='strict' is not valid; pass a"):
        EventWriter(model, payload_policy="strict")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="field_rules=None is not valid; pass an Event"):
        EventWriter(model, field_rules=None)  # type: ignore[arg-type]
    # The same for an event built alone, and a payload prepared alone.
    with pytest.raises(ConfigurationError, match="payload_policy='strict' is not valid; pass a"):
        new_event(event_type="x", payload_policy="strict")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="field_rules=None is not valid; pass an Event"):
        new_event(event_type="x", field_rules=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="policy=None is not valid; pass a PayloadPolicy"):
        prepare_payload({}, policy=None)  # type: ignore[arg-type]
    writer = BufferedWriter(model, "host=/nonexistent port=1 dbname=x")  # never started
    key = uuid.uuid4()
    with pytest.raises(ValidationError, match=r"expected a NewEvent .*got dict"):
        writer.enqueue({"event_type": "x"})  # type: ignore[arg-type]
    event = new_event(session_id=key, user_id=key, event_type="x")
    with pytest.raises(
        ValidationError, match=r"got a NewEvent and the fields \['tool_name'\]; pass one or"
    ):
        writer.enqueue(event, tool_name="search")  # type: ignore[call-overload]
    assert writer.counters.queued == 0


NEW_EVENT_FIELDS = list(NewEvent.__struct_fields__)


@pytest.fixture
def engine_at_utc_plus_14(database_url: URL) -> Iterator[Engine]:
    engine = create_engine(database_url, connect_args={"options": "-c TimeZone=Pacific/Kiritimati"})
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.mark.asyncio
async def test_values_at_the_limits_are_stored_by_every_path_and_read_back_unchanged(
    host_engine: Engine,
    host_models: HostModels,
    async_engine: AsyncEngine,
    engine_at_utc_plus_14: Engine,
) -> None:
    """What the checks accept, PostgreSQL stores and Python reads back, in any time zone."""
    keys = seed(host_engine, host_models)
    model = host_models.EventLog
    writer = EventWriter(model, field_rules=EventFieldRules(max_future=None))
    first = datetime(1, 1, 2, tzinfo=UTC)
    last = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
    columns = {
        "tool_name": "caf\u00e9 \U0001f527 \u2211",
        "error_code": "E\u00a0500",  # no-break space inside
        "approval_status": "\u00e0 revoir",
    }

    def fields(path: str, when: datetime) -> dict[str, Any]:
        return {**keys, "event_type": path, "created_at": when, **columns}

    expected: dict[str, datetime] = {}
    for when, suffix in ((first, "first"), (last, "last")):
        paths = {name: f"{name}.{suffix}" for name in ("record", "detached", "adetached")}
        paths |= {name: f"{name}.{suffix}" for name in ("enqueue", "aenqueue", "bulk")}
        with Session(host_engine) as session:
            writer.record(session, **fields(paths["record"], when))
            session.commit()
        writer.record_detached(host_engine, **fields(paths["detached"], when))
        await writer.arecord_detached(async_engine, **fields(paths["adetached"], when))
        with BufferedWriter(model, host_engine) as buffered:
            buffered.enqueue(writer.event(**fields(paths["enqueue"], when)))
        async with AsyncBufferedWriter(model, async_engine) as abuffered:
            await abuffered.enqueue(writer.event(**fields(paths["aenqueue"], when)))
        bulk = write_events(model, host_engine, [writer.event(**fields(paths["bulk"], when))])
        assert bulk.written == 1
        expected |= dict.fromkeys(paths.values(), when)

    reader = EventLogReader(model, engine_at_utc_plus_14)
    page = reader.session_timeline(keys["session_id"], user_id=keys["user_id"], order="oldest")
    assert {event.event_type: event.created_at for event in page.items} == expected
    for event in page.items:
        assert (event.tool_name, event.error_code, event.approval_status) == tuple(columns.values())
    with Session(engine_at_utc_plus_14) as session:  # the host's own ORM reads work too
        stored = session.scalars(select(model.created_at).order_by(model.created_at)).all()
    assert stored == sorted(expected.values())


def test_a_wrong_id_or_key_in_a_hand_made_event_is_refused() -> None:
    key = uuid.uuid4()
    good = new_event(session_id=key, user_id=key, event_type="x")
    for change, fragment in (
        ({"id": "01890000-0000-7000-8000-000000000000"}, "id must be a uuid.UUID, got str"),
        ({"session_id": "abc"}, "session_id must be a uuid.UUID or int"),
        ({"user_id": None}, "user_id must be a uuid.UUID or int"),
        ({"project_id": 1.5}, "project_id must be a uuid.UUID, int or None"),
        ({"agent_id": "a1"}, "agent_id must be a uuid.UUID, int or None"),
        ({"payload_json": {"a": 1}}, "payload_json must be a str of JSON text, got dict"),
        ({"payload_json": None}, "payload_json must be a str of JSON text, got NoneType"),
        ({"event_type": "bad type"}, "event_type 'bad type' does not match"),
        ({"redacted_paths": ["/a"]}, "redacted_paths must be a tuple of str"),
        ({"redacted_paths": ("/a", 1)}, "redacted_paths must be a tuple of str"),
    ):
        with pytest.raises(ValidationError) as caught:
            msgspec.structs.replace(good, **change)
        assert str(caught.value).startswith(fragment)
    assert msgspec.structs.replace(good, redacted_paths=("/a",)).redacted_paths == ("/a",)
    # A hand-made event gets the fixed checks only: the far future is a rule of new_event's.
    far = msgspec.structs.replace(good, created_at=datetime(3000, 1, 1, tzinfo=UTC))
    assert far.created_at.year == 3000


@pytest.mark.skipif(sys.version_info < (3, 13), reason="copy.replace is new in Python 3.13")
def test_copy_replace_of_a_built_event_is_checked_again() -> None:
    key = uuid.uuid4()
    good = new_event(session_id=key, user_id=key, event_type="x")
    with pytest.raises(ValidationError, match="created_at must be a timezone-aware datetime"):
        copy.replace(good, created_at=datetime(2026, 1, 1))  # type: ignore[attr-defined]


def test_a_hand_made_event_is_checked_on_any_thread_while_others_build_events() -> None:
    """The writers skip the event's own checks for the values they checked already; that
    leaves no thread, and no later construction, unchecked."""
    key = uuid.uuid4()
    good = new_event(session_id=key, user_id=key, event_type="x")
    stop = threading.Event()

    def build() -> None:
        while not stop.is_set():
            new_event(session_id=key, user_id=key, event_type="x", payload={"n": 1})

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    builders = [threading.Thread(target=build) for _ in range(2)]
    for thread in builders:
        thread.start()
    try:
        refused = 0
        for _ in range(5000):
            try:
                msgspec.structs.replace(good, event_type="bad type")
            except ValidationError:
                refused += 1
    finally:
        stop.set()
        for thread in builders:
            thread.join()
        sys.setswitchinterval(interval)
    assert refused == 5000
    with pytest.raises(ValidationError, match="event_type 'bad type' does not match"):
        NewEvent(good.id, key, key, "bad type", "{}", good.created_at)

    errors: list[BaseException] = []

    def by_hand() -> None:  # a thread that never built an event
        try:
            NewEvent(good.id, key, key, "bad type", "{}", good.created_at)
        except ValidationError as error:
            errors.append(error)

    fresh = threading.Thread(target=by_hand)
    fresh.start()
    fresh.join()
    assert len(errors) == 1


def test_code_that_runs_while_a_writer_builds_its_event_gets_its_own_events_checked() -> None:
    """A profiler's hook (or a signal handler) may run between the writer's checks and the
    event's; an event it makes by hand is checked all the same."""
    key = uuid.uuid4()
    good = new_event(session_id=key, user_id=key, event_type="x")
    outcomes: list[str] = []

    def hook(frame: Any, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code.co_name == "__post_init__" and not outcomes:
            try:
                msgspec.structs.replace(good, event_type="bad type")
            except ValidationError:
                outcomes.append("refused")
            else:
                outcomes.append("accepted")

    sys.setprofile(hook)
    try:
        built = new_event(session_id=key, user_id=key, event_type="y")
    finally:
        sys.setprofile(None)
    assert outcomes == ["refused"]
    assert built.event_type == "y"


class LegacyKind(str, enum.Enum):  # noqa: UP042 - the pre-3.11 spelling of StrEnum
    SUMMARY = "summary"
    REVIEW = "review"


def test_an_enum_member_of_str_is_stored_as_its_value_not_its_str() -> None:
    """``str()`` of a ``(str, Enum)`` member is ``'LegacyKind.SUMMARY'``: the event keeps the
    text that was checked, which readers' filters and the vocabulary compare with."""

    class Shown(str):
        def __str__(self) -> str:
            return "something else"

    key = uuid.uuid4()
    event = new_event(
        session_id=key,
        user_id=key,
        event_type=LegacyKind.SUMMARY,
        error_code=LegacyKind.REVIEW,
        tool_name=Shown("search"),
        approval_status=LegacyKind.SUMMARY,
        field_rules=EventFieldRules(event_types=LegacyKind, approval_statuses=LegacyKind),
    )
    values = (event.event_type, event.error_code, event.tool_name, event.approval_status)
    assert values == ("summary", "review", "search", "summary")
    assert all(type(value) is str for value in values)
    refused = r"^event_type 'review' is not one of the allowed event types \('summary'\)"
    with pytest.raises(ValidationError, match=refused):
        new_event(
            session_id=key,
            user_id=key,
            event_type=LegacyKind.REVIEW,
            field_rules=EventFieldRules(event_types={LegacyKind.SUMMARY}),
        )


def test_an_event_holds_plain_str_and_the_keys_it_was_given() -> None:
    class Text(str):
        pass

    class Id(uuid.UUID):
        pass

    key = Id(int=5)
    event = new_event(
        session_id=key,
        user_id=key,
        event_type=EventType.TOOL_CALL,
        error_code=Text("timeout"),
        tool_name=Text("search"),
        approval_status=ApprovalStatus.GRANTED,
    )
    assert event.session_id is key
    assert event.user_id is key
    for value in (event.event_type, event.error_code, event.tool_name, event.approval_status):
        assert type(value) is str
    assert (event.event_type, event.error_code, event.tool_name, event.approval_status) == (
        "tool_call",
        "timeout",
        "search",
        "granted",
    )


def test_an_event_is_a_frozen_struct_that_the_collector_does_not_track() -> None:
    """A queued event gives the garbage collector nothing to count (enqueue's p99)."""
    key = uuid.uuid4()
    event = new_event(session_id=key, user_id=key, event_type="x", payload={"a": [1]})
    assert not gc.is_tracked(event)
    with pytest.raises(AttributeError):
        event.event_type = "y"  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(event))
    assert again == event
    assert hash(again) == hash(event)
    assert msgspec.structs.asdict(event)["payload_json"] == '{"a":[1]}'


def _model_with_keys(users: Any, chat_sessions: Any, projects: Any, agents: Any) -> Any:
    """An EventLog model of a host whose four tables have keys of these SQL types."""

    class Base(DeclarativeBase):
        pass

    for table, sql_type in (
        ("users", users),
        ("chat_sessions", chat_sessions),
        ("user_projects", projects),
        ("user_agents", agents),
    ):
        type(
            table,
            (Base,),
            {"__tablename__": table, "id": mapped_column(sql_type, primary_key=True)},
        )
    return event_log_model(Base, key_type=uuid.UUID if users is Uuid else int)


def test_integer_keys_are_checked_against_the_range_of_their_column() -> None:
    writer = EventWriter(_model_with_keys(Integer, BigInteger, SmallInteger, Integer))
    keys = {"session_id": 1, "user_id": 1}
    for name, sql_type, limit in (
        ("session_id", "int8", 2**63),
        ("user_id", "int4", 2**31),
        ("project_id", "int2", 2**15),
        ("agent_id", "int4", 2**31),
    ):
        for fits in (-limit, limit - 1):
            assert getattr(writer.event(event_type="x", **{**keys, name: fits}), name) == fits
        for bad in (-limit - 1, limit):
            with pytest.raises(ValidationError) as caught:
                writer.event(event_type="x", **{**keys, name: bad})
            assert str(caught.value) == (
                f"{name}={bad} is out of range for the {sql_type} column {name}; pass an int "
                f"from {-limit} to {limit - 1}"
            )
        wrong = uuid.UUID(int=1)
        with pytest.raises(ValidationError) as caught:
            writer.event(event_type="x", **{**keys, name: wrong})
        assert str(caught.value) == (
            f"{name}={wrong!r} (UUID) does not fit the {sql_type} column {name}; pass an int"
        )
    every_key = {name: uuid.UUID(int=n) for n, name in enumerate(["session_id", "user_id"])}
    with pytest.raises(
        ValidationError, match=r"^session_id=UUID\('[0-]+'\) \(UUID\) does not fit the int8"
    ):
        writer.event(event_type="x", **every_key)


def test_an_int_key_into_a_uuid_column_is_refused_whichever_key_it_is() -> None:
    writer = EventWriter(_model_with_keys(Uuid, Uuid, Uuid, Uuid))
    keys = {"session_id": uuid.uuid4(), "user_id": uuid.uuid4()}
    for name in ("session_id", "user_id", "project_id", "agent_id"):
        with pytest.raises(ValidationError) as caught:
            writer.event(event_type="x", **{**keys, name: 5})
        assert str(caught.value) == (
            f"{name}=5 (int) does not fit the uuid column {name}; pass a uuid.UUID"
        )


def test_a_model_that_is_not_an_event_log_or_has_keys_of_another_type_is_refused() -> None:
    not_a_model = "model must be the host's EventLog class (built with event_log_model() or "
    down = "host=/nonexistent-dir port=1 dbname=x"
    host_table = _model_with_keys(Integer, Integer, Integer, Integer).metadata.tables["users"]
    for wrong in (42, object, type("Users", (), {"__table__": host_table})):
        for use in (
            EventWriter,
            lambda model: write_events(model, down, []),
            lambda model: BufferedWriter(model, down),
        ):
            with pytest.raises(ConfigurationError) as caught:
                use(wrong)
            assert str(caught.value).startswith(not_a_model)
            assert str(caught.value).endswith(f"got {wrong!r}")
    with pytest.raises(ConfigurationError) as caught:
        EventWriter(_model_with_keys(Integer, Integer, Integer, String(20)))
    assert str(caught.value).startswith(
        "EventLog.agent_id has type String(length=20); the writers support UUID, SMALLINT, "
        "INTEGER and BIGINT keys"
    )
