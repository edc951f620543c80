"""GenAI events: the OpenTelemetry GenAI attribute names in the payload, token usage read back."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import ForeignKey, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import (
    BufferedWriter,
    EventLogReader,
    EventType,
    EventWriter,
    event_log_model,
    genai_payload,
)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class ChatSession(Base):
    __tablename__ = "chat_sessions"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))


class UserProject(Base):
    __tablename__ = "user_projects"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class UserAgent(Base):
    __tablename__ = "user_agents"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


EventLog = event_log_model(Base)


def main(url: str) -> int:
    engine = create_engine(url)
    Base.metadata.create_all(engine)  # a real host runs its Alembic migrations instead
    started = datetime.now(UTC)
    with Session(engine) as session:
        user = User(id=uuid.uuid4())
        planner, reviewer = UserAgent(id=uuid.uuid4()), UserAgent(id=uuid.uuid4())
        session.add_all([user, planner, reviewer])
        session.flush()
        chat = ChatSession(id=uuid.uuid4(), user_id=user.id)
        session.add(chat)
        session.commit()
        user_id, session_id = user.id, chat.id
        names: dict[uuid.UUID | None, str] = {planner.id: "planner", reviewer.id: "reviewer"}
        planner_id, reviewer_id = planner.id, reviewer.id

    writer = EventWriter(EventLog)
    # One model call: the operation is the event type, the rest goes in the payload.
    writer.record_detached(
        engine,
        session_id=session_id,
        user_id=user_id,
        agent_id=planner_id,
        event_type=EventType.CHAT,
        payload=genai_payload(
            {"finish_reason": "tool_calls"},  # the host's own keys
            provider="openai",
            request_model="gpt-4o",
            response_model="gpt-4o-2024-08-06",
            input_tokens=1200,
            output_tokens=85,
            conversation_id="thread_abc123",  # the provider's thread, if not the session
        ),
    )
    # The tool run the model asked for, linked to that request by the model's call id.
    writer.record_detached(
        engine,
        session_id=session_id,
        user_id=user_id,
        agent_id=planner_id,
        event_type=EventType.EXECUTE_TOOL,
        tool_name="web_search",
        payload=genai_payload({"results": 5}, tool_call_id="call_VSPygqKTWdrhaFErNvMV18Yl"),
    )
    # A type of your own for a chat operation names the operation in the payload.
    with BufferedWriter(EventLog, engine) as buffered:
        for turn in range(3):
            buffered.enqueue(
                session_id=session_id,
                user_id=user_id,
                agent_id=reviewer_id,
                event_type="myapp.code_review",
                payload=genai_payload(
                    {"turn": turn},
                    provider="anthropic",
                    request_model="claude-sonnet-4",
                    operation_name=EventType.CHAT,
                    input_tokens=3000,
                    output_tokens=400,
                ),
            )

    reader = EventLogReader(EventLog, engine)
    usage = reader.token_usage(user_id=user_id, since=started, until=datetime.now(UTC))
    for group in usage:
        print(
            f"{names[group.agent_id]} on {group.model}: {group.input_tokens} input + "
            f"{group.output_tokens} output tokens, events: {group.events}"
        )
    yesterday = started - timedelta(days=1)
    (total,) = reader.token_usage(user_id=user_id, since=yesterday, until=datetime.now(UTC), by=())
    print("tokens in all:", total.input_tokens + total.output_tokens)

    with Session(engine) as session:
        stored = session.scalar(select(func.count()).select_from(EventLog)) or 0
    engine.dispose()
    print("events stored:", stored)
    return stored


if __name__ == "__main__":
    main(sys.argv[1])
