"""GenAI semantic conventions: `genai_payload` writes their keys, `token_usage` adds them up."""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from hostmodels import HostModels, build_host_models
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from eventlog_persist import (
    AsyncEventLogReader,
    BufferedWriter,
    EventFilter,
    EventLogReader,
    EventType,
    EventWriter,
    TokenUsage,
    genai_payload,
    new_event,
    write_events,
)
from eventlog_persist.exceptions import ValidationError

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SPAN = {"since": T0 - timedelta(days=1), "until": T0 + timedelta(days=1)}

# -- genai_payload -------------------------------------------------------------------------


def test_keys_are_the_conventions_own_names() -> None:
    """Spelled as the installed opentelemetry-semantic-conventions spells them (imported by
    this test only: the package never imports it)."""
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as semconv

    payload = genai_payload(
        request_model="gpt-4o",
        response_model="gpt-4o-2024-08-06",
        provider="openai",
        input_tokens=12,
        output_tokens=30,
        tool_call_id="call_1",
        conversation_id="conv_1",
        operation_name="chat",
    )
    assert payload == {
        semconv.GEN_AI_REQUEST_MODEL: "gpt-4o",
        semconv.GEN_AI_RESPONSE_MODEL: "gpt-4o-2024-08-06",
        semconv.GEN_AI_PROVIDER_NAME: "openai",
        semconv.GEN_AI_USAGE_INPUT_TOKENS: 12,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 30,
        semconv.GEN_AI_TOOL_CALL_ID: "call_1",
        semconv.GEN_AI_CONVERSATION_ID: "conv_1",
        semconv.GEN_AI_OPERATION_NAME: "chat",
    }
    # The event types that are GenAI operations are spelled as the conventions' values.
    operations = {member.value for member in semconv.GenAiOperationNameValues}
    genai_types = {EventType.CHAT, EventType.EXECUTE_TOOL, EventType.INVOKE_AGENT}
    genai_types |= {EventType.CREATE_AGENT, EventType.EMBEDDINGS, EventType.GENERATE_CONTENT}
    assert genai_types | {EventType.TEXT_COMPLETION} <= operations


def test_host_keys_are_kept_and_not_changed() -> None:
    own = {"prompt_chars": 120, "gen_ai.request.temperature": 0.2}
    payload = genai_payload(own, request_model="gpt-4o", input_tokens=12)
    assert payload == {
        "prompt_chars": 120,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 12,
    }
    assert own == {"prompt_chars": 120, "gen_ai.request.temperature": 0.2}
    assert payload is not own
    assert genai_payload() == {}
    assert genai_payload(own) == own
    assert genai_payload(input_tokens=0, output_tokens=0) == {
        "gen_ai.usage.input_tokens": 0,
        "gen_ai.usage.output_tokens": 0,
    }
    # A StrEnum is stored as its value.
    assert genai_payload(operation_name=EventType.CHAT) == {"gen_ai.operation.name": "chat"}
    assert type(genai_payload(operation_name=EventType.CHAT)["gen_ai.operation.name"]) is str
    # So is a (str, Enum) member, whose str() would be "Provider.OPENAI".
    assert genai_payload(provider=Provider.OPENAI) == {"gen_ai.provider.name": "openai"}


class Provider(str, enum.Enum):  # noqa: UP042 - the pre-3.11 spelling of StrEnum
    OPENAI = "openai"


def test_the_docstring_example_holds() -> None:
    assert repr(genai_payload({"prompt_chars": 120}, request_model="gpt-4o", input_tokens=12)) == (
        "{'prompt_chars': 120, 'gen_ai.request.model': 'gpt-4o', 'gen_ai.usage.input_tokens': 12}"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"input_tokens": True}, r"input_tokens=\.\.\.\) must be an int >= 0 .* got bool True$"),
        ({"output_tokens": 1.5}, r"got float 1\.5; convert it with int\(\.\.\.\)"),
        ({"input_tokens": "12"}, r"got str '12'; convert it with int"),
        ({"output_tokens": math.nan}, r"output_tokens=\.\.\.\) must be an int >= 0"),
        ({"input_tokens": -1}, r"genai_payload\(input_tokens=-1\) is negative"),
        ({"request_model": ""}, r"request_model=''\) is empty; pass the name, or None"),
        ({"response_model": " gpt-4o"}, r"response_model=' gpt-4o'\) has leading or trailing"),
        ({"provider": 7}, r"provider=\.\.\.\) must be a str or None, got int 7"),
        ({"tool_call_id": "call\n1"}, r"tool_call_id=\.\.\.\) 'call\\n1' contains a line feed"),
        ({"conversation_id": "c\x00"}, r"conversation_id=\.\.\.\) 'c\\x00' contains NUL"),
        ({"operation_name": b"chat"}, r"operation_name=\.\.\.\) must be a str or None, got bytes"),
    ],
)
def test_bad_values_are_refused_with_the_fix(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        genai_payload(**arguments)


def test_bad_payloads_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"got 'gen_ai.usage.input_tokens' twice: .* as"):
        genai_payload({"gen_ai.usage.input_tokens": 3}, input_tokens=4)
    with pytest.raises(ValidationError, match=r"as a mapping \(a dict\), got list \[1\]"):
        genai_payload([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        genai_payload(input_token=4)  # type: ignore[call-arg]  # a typo is no host key


def test_the_payload_survives_the_writers_policy() -> None:
    """Redaction by key name spares ``*_tokens`` and the ids: every value is stored as given."""
    payload = genai_payload(
        request_model="claude-sonnet-4",
        provider="anthropic",
        input_tokens=1200,
        output_tokens=80,
        tool_call_id="toolu_01A09q90qw90lq917835lq9",
        conversation_id="conv_5j66UpCpwteGg4YSxUnt7lPY",
    )
    event = new_event(
        session_id=uuid.uuid4(), user_id=uuid.uuid4(), event_type="chat", payload=payload
    )
    assert event.redacted_paths == ()
    assert all(f'"{key}":' in event.payload_json for key in payload)


# -- token_usage ---------------------------------------------------------------------------


@dataclass
class Usage:
    """Two users; the first has a project, two agents and a chat; the second a chat."""

    user: Any
    other_user: Any
    project: Any
    agent: Any
    second_agent: Any
    chat: Any
    other_chat: Any


def make_usage(engine: Engine, models: HostModels) -> Usage:
    with Session(engine) as session:
        user, other = models.User(id=models.new_key()), models.User(id=models.new_key())
        session.add_all([user, other])
        session.flush()
        rows = [
            models.ChatSession(id=models.new_key(), user_id=user.id),
            models.ChatSession(id=models.new_key(), user_id=other.id),
            models.UserProject(id=models.new_key(), user_id=user.id),
            models.UserAgent(id=models.new_key(), user_id=user.id),
            models.UserAgent(id=models.new_key(), user_id=user.id),
        ]
        session.add_all(rows)
        session.flush()
        keys = [row.id for row in rows]
        session.commit()
        return Usage(user.id, other.id, keys[2], keys[3], keys[4], keys[0], keys[1])


def write_usage(engine: Engine, models: HostModels, usage: Usage) -> None:
    """The events, through each public writer; every count is known (see the tests)."""
    writer = EventWriter(models.EventLog)
    mine = {"session_id": usage.chat, "user_id": usage.user, "project_id": usage.project}

    def at(minutes: int) -> datetime:
        return T0 + timedelta(minutes=minutes)

    # Bulk: agent 1 on gpt-4o (request model only) and on a response model that differs.
    write_events(
        models.EventLog,
        engine,
        [
            writer.event(
                **mine,
                agent_id=usage.agent,
                event_type=EventType.CHAT,
                payload=genai_payload(request_model="gpt-4o", input_tokens=100, output_tokens=10),
                created_at=at(1),
            ),
            writer.event(
                **mine,
                agent_id=usage.agent,
                event_type=EventType.CHAT,
                payload=genai_payload(
                    {"turn": 2},
                    request_model="gpt-4o",
                    response_model="gpt-4o-2024-08-06",
                    provider="openai",
                    input_tokens=200,
                    output_tokens=20,
                ),
                created_at=at(2),
            ),
            writer.event(
                **mine,
                agent_id=usage.agent,
                event_type=EventType.CHAT,
                payload=genai_payload(request_model="gpt-4o", input_tokens=5),  # input only
                created_at=at(3),
            ),
        ],
    )
    # Detached: agent 2 on claude, and a tool run that reports no tokens (not counted).
    writer.record_detached(
        engine,
        **mine,
        agent_id=usage.second_agent,
        event_type="myapp.summary",
        payload=genai_payload(
            request_model="claude-sonnet-4",
            operation_name="chat",
            input_tokens=1000,
            output_tokens=400,
        ),
        created_at=at(4),
    )
    writer.record_detached(
        engine,
        **mine,
        agent_id=usage.second_agent,
        event_type=EventType.EXECUTE_TOOL,
        tool_name="search",
        payload=genai_payload(tool_call_id="call_1"),
        created_at=at(5),
    )
    # Buffered: no agent, no model; and what another writer may have stored by hand.
    with BufferedWriter(models.EventLog, engine) as buffered:
        buffered.enqueue(
            **mine,
            event_type=EventType.CHAT,
            payload=genai_payload(input_tokens=7, output_tokens=3),
            created_at=at(6),
        )
        garbage: list[object] = [
            {"gen_ai.usage.input_tokens": "12", "gen_ai.usage.output_tokens": None},
            {"gen_ai.usage.input_tokens": 1.5, "gen_ai.usage.output_tokens": -4},
            {"gen_ai.usage.input_tokens": True, "gen_ai.usage.output_tokens": [1]},
            {"gen_ai.usage.input_tokens": {"n": 1}, "gen_ai.request.model": 42},
            {"gen_ai.usage.input_tokens": "", "gen_ai.response.model": None},
            ["gen_ai.usage.input_tokens", 5],
            "gen_ai.usage.input_tokens",
            17,
            None,
        ]
        for payload in garbage:
            buffered.enqueue(
                **mine,
                agent_id=usage.agent,
                event_type=EventType.CHAT,
                payload=payload,
                created_at=at(7),
            )
        # Half garbage: the good count counts, the other is none (0).
        buffered.enqueue(
            **mine,
            agent_id=usage.agent,
            event_type=EventType.CHAT,
            payload={
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 2.0,
                "gen_ai.usage.output_tokens": "lots",
            },
            created_at=at(8),
        )
        # Outside the range, or another user's: never counted.
        for when in (SPAN["since"] - timedelta(seconds=1), SPAN["until"]):
            buffered.enqueue(
                **mine,
                agent_id=usage.agent,
                event_type=EventType.CHAT,
                payload=genai_payload(request_model="gpt-4o", input_tokens=10**6),
                created_at=when,
            )
        buffered.enqueue(
            session_id=usage.other_chat,
            user_id=usage.other_user,
            event_type=EventType.CHAT,
            payload=genai_payload(request_model="gpt-4o", input_tokens=10**6),
            created_at=at(9),
        )


@pytest.fixture
def usage(host_engine: Engine, host_models: HostModels) -> Usage:
    usage = make_usage(host_engine, host_models)
    write_usage(host_engine, host_models, usage)
    return usage


@pytest.fixture
def reader(host_engine: Engine, host_models: HostModels) -> EventLogReader[Any]:
    return EventLogReader(host_models.EventLog, host_engine)


def expected_by_agent_and_model(usage: Usage) -> list[TokenUsage[Any]]:
    return [
        TokenUsage(usage.second_agent, "claude-sonnet-4", 1000, 400, 1),
        TokenUsage(usage.agent, "gpt-4o-2024-08-06", 200, 20, 1),
        TokenUsage(usage.agent, "gpt-4o", 107, 10, 3),  # 100 + 5 + 2.0; 10 + none + "lots"
        TokenUsage(None, None, 7, 3, 1),
    ]


def test_sums_per_agent_and_model(reader: EventLogReader[Any], usage: Usage) -> None:
    expected = expected_by_agent_and_model(usage)
    assert reader.token_usage(user_id=usage.user, **SPAN) == expected
    assert reader.token_usage(project_id=usage.project, **SPAN) == expected
    assert reader.token_usage(user_id=usage.user, by=("model", "agent_id"), **SPAN) == expected
    result = reader.token_usage(user_id=usage.user, **SPAN)[0]
    assert isinstance(result.input_tokens, int)
    assert isinstance(result.agent_id, uuid.UUID)


def test_groups_come_by_total_tokens_and_zero_counts(
    reader: EventLogReader[Any], usage: Usage, host_engine: Engine, host_models: HostModels
) -> None:
    """Groups are ordered by input + output tokens, largest first; a count of 0 is a count
    (its event is counted), not a missing one."""
    writer = EventWriter(host_models.EventLog)
    later = T0 + timedelta(days=30)
    mine = {"session_id": usage.chat, "user_id": usage.user, "event_type": EventType.CHAT}
    counts = {"mostly-output": (1, 100), "input-only": (90, 0), "nothing-used": (0, 0)}
    write_events(
        host_models.EventLog,
        host_engine,
        [
            writer.event(
                **mine,
                payload=genai_payload(request_model=model, input_tokens=used, output_tokens=made),
                created_at=later,
            )
            for model, (used, made) in counts.items()
        ],
    )
    span = {"since": later - timedelta(hours=1), "until": later + timedelta(hours=1)}
    assert reader.token_usage(user_id=usage.user, by=("model",), **span) == [
        TokenUsage(None, "mostly-output", 1, 100, 1),
        TokenUsage(None, "input-only", 90, 0, 1),
        TokenUsage(None, "nothing-used", 0, 0, 1),
    ]


def test_groupings(reader: EventLogReader[Any], usage: Usage) -> None:
    scope = {"user_id": usage.user, **SPAN}
    assert reader.token_usage(by=("agent_id",), **scope) == [
        TokenUsage(usage.second_agent, None, 1000, 400, 1),
        TokenUsage(usage.agent, None, 307, 30, 4),
        TokenUsage(None, None, 7, 3, 1),
    ]
    assert reader.token_usage(by=["model"], **scope) == [
        TokenUsage(None, "claude-sonnet-4", 1000, 400, 1),
        TokenUsage(None, "gpt-4o-2024-08-06", 200, 20, 1),
        TokenUsage(None, "gpt-4o", 107, 10, 3),
        TokenUsage(None, None, 7, 3, 1),
    ]
    assert reader.token_usage(by=(), **scope) == [TokenUsage(None, None, 1314, 433, 6)]
    # Nothing reported in the range: no row, also for the total.
    empty = {"since": T0 + timedelta(hours=2), "until": T0 + timedelta(hours=3)}
    assert reader.token_usage(user_id=usage.user, by=(), **empty) == []
    assert reader.token_usage(user_id=usage.user, **empty) == []


def test_narrowing_and_filters(reader: EventLogReader[Any], usage: Usage) -> None:
    mine = {"user_id": usage.user, **SPAN}
    assert reader.token_usage(agent_id=usage.second_agent, **mine) == [
        TokenUsage(usage.second_agent, "claude-sonnet-4", 1000, 400, 1)
    ]
    assert reader.token_usage(session_id=usage.chat, by=(), **mine) == [
        TokenUsage(None, None, 1314, 433, 6)
    ]
    chats = EventFilter(event_types={EventType.CHAT})
    assert reader.token_usage(filters=chats, by=(), **mine) == [TokenUsage(None, None, 314, 33, 5)]
    first_minutes = EventFilter(until=T0 + timedelta(minutes=2))  # intersects the range
    assert reader.token_usage(filters=first_minutes, by=(), **mine) == [
        TokenUsage(None, None, 100, 10, 1)
    ]
    assert reader.token_usage(user_id=usage.other_user, by=(), **SPAN) == [
        TokenUsage(None, None, 10**6, 0, 1)
    ]
    # The other user's events are not in the first user's project, nor in their session.
    assert reader.token_usage(user_id=usage.other_user, project_id=usage.project, **SPAN) == []
    assert reader.token_usage(user_id=usage.other_user, session_id=usage.chat, **SPAN) == []


def test_the_range_is_since_inclusive_until_exclusive(
    reader: EventLogReader[Any], usage: Usage
) -> None:
    wider = {"since": SPAN["since"] - timedelta(seconds=1), "until": SPAN["until"]}
    assert reader.token_usage(user_id=usage.user, by=(), **wider)[0].input_tokens == 1314 + 10**6
    later = {"since": SPAN["since"], "until": SPAN["until"] + timedelta(microseconds=1)}
    assert reader.token_usage(user_id=usage.user, by=(), **later)[0].input_tokens == 1314 + 10**6


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"user_id": None}, "needs a scope: pass user_id=..., project_id=... or both"),
        ({"since": datetime(2025, 3, 1)}, r"since=2025-03-01T00:00:00\) is a naive datetime"),
        ({"until": datetime(2025, 3, 2)}, "naive datetime"),
        ({"since": None}, r"needs a time range: pass since=\.\.\. and until=\.\.\."),
        ({"until": T0 - timedelta(days=9)}, "empty range"),
        ({"by": ("agent_id", "tool_name")}, r"cannot group token usage by 'tool_name'; choose"),
        ({"by": ("payload",)}, r"choose from 'agent_id', 'model'"),
        ({"by": "model"}, r"by must be a tuple .* got str 'model'; pass e.g. by=\('model',\)"),
        ({"by": None}, r"got NoneType None; pass e.g. by=\('agent_id', 'model'\)"),
        ({"by": {"model": 1}}, r"by must be a tuple .* got dict \{'model': 1\}"),
        ({"by": b"model"}, r"by must be a tuple .* got bytes b'model'"),
        ({"by": bytearray(b"model")}, r"by must be a tuple .* got bytearray"),
        ({"by": ("model", "model")}, r"names 'model' twice"),
        ({"user_id": "alice"}, r"user_id must be a uuid.UUID or an int .* convert it"),
        ({"agent_id": 7}, "agent_id"),
        ({"filters": {"event_types": ["chat"]}}, "filters must be an EventFilter"),
    ],
)
def test_bad_arguments_are_refused_before_any_query(
    host_models: HostModels, arguments: dict[str, Any], message: str
) -> None:
    # An engine that cannot connect: a refusal must come before any query is sent.
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    reader = EventLogReader(host_models.EventLog, engine)
    options: dict[str, Any] = {"user_id": uuid.uuid4(), **SPAN, **arguments}
    with pytest.raises(ValidationError, match=message):
        reader.token_usage(**options)


def test_integer_keyed_host(engine: Engine) -> None:
    models = build_host_models(keys="integer")
    models.Base.metadata.create_all(engine)
    usage = make_usage(engine, models)
    write_usage(engine, models, usage)
    reader = EventLogReader(models.EventLog, engine)
    result = reader.token_usage(user_id=usage.user, **SPAN)
    assert result == expected_by_agent_and_model(usage)
    assert isinstance(result[0].agent_id, int)


def test_the_statement_path_agrees(
    reader: EventLogReader[Any], usage: Usage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drivers other than psycopg run the SQLAlchemy statement instead of the cached text."""
    from eventlog_persist._read_sql import PreparedQuery

    monkeypatch.setattr(PreparedQuery, "driver_sql", lambda self, dialect: None)
    assert reader.token_usage(user_id=usage.user, **SPAN) == expected_by_agent_and_model(usage)
    assert reader.token_usage(user_id=usage.user, by=(), **SPAN) == [
        TokenUsage(None, None, 1314, 433, 6)
    ]


@pytest_asyncio.fixture
async def async_engine(database_url: URL, host_engine: Engine) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_async_twin(
    host_engine: Engine, host_models: HostModels, async_engine: AsyncEngine, usage: Usage
) -> None:
    reader = AsyncEventLogReader(host_models.EventLog, async_engine)
    sync = EventLogReader(host_models.EventLog, host_engine)
    for options in (
        {"user_id": usage.user},
        {"project_id": usage.project, "by": ("model",)},
        {"user_id": usage.user, "agent_id": usage.agent, "by": ()},
    ):
        result = await reader.token_usage(**options, **SPAN)
        assert result == sync.token_usage(**options, **SPAN)
        assert result
    assert await reader.token_usage(user_id=usage.user, **SPAN) == expected_by_agent_and_model(
        usage
    )
    with pytest.raises(ValidationError, match="cannot group token usage by 'tool_name'"):
        await reader.token_usage(user_id=usage.user, by=("tool_name",), **SPAN)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_async_statement_path(
    host_models: HostModels,
    async_engine: AsyncEngine,
    usage: Usage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from eventlog_persist._read_sql import PreparedQuery

    monkeypatch.setattr(PreparedQuery, "driver_sql", lambda self, dialect: None)
    reader = AsyncEventLogReader(host_models.EventLog, async_engine)
    assert await reader.token_usage(project_id=usage.project, **SPAN) == (
        expected_by_agent_and_model(usage)
    )
