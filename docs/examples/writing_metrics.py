"""Metrics: a buffered writer's stats, scraped by Prometheus and collected by OpenTelemetry."""

from __future__ import annotations

import sys
import uuid

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import ForeignKey, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import BufferedWriter, EventType, event_log_model
from eventlog_persist.metrics import register_opentelemetry, register_prometheus


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
    with Session(engine) as session:
        user = User(id=uuid.uuid4())
        session.add(user)
        session.flush()
        chat = ChatSession(id=uuid.uuid4(), user_id=user.id)
        session.add(chat)
        session.commit()
        user_id, session_id = user.id, chat.id

    # A real host passes nothing (prometheus-client's default REGISTRY, served by
    # start_http_server or its web framework) and a provider with an OTLP exporter.
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    with BufferedWriter(EventLog, engine, batch_size=50) as events:
        scraped = register_prometheus({"api": events}, registry=registry)
        collected = register_opentelemetry({"api": events}, meter_provider=meter_provider)
        for n in range(200):
            events.enqueue(
                session_id=session_id,
                user_id=user_id,
                event_type=EventType.TOOL_CALL,
                payload={"query": f"restaurants {n}"},
            )
        events.flush()
        stats = events.stats
        print("written:", stats.counters.written, "queued:", stats.counters.queued)
        print("oldest queued age:", stats.oldest_queued_age, "last error:", stats.last_error)
        print("batches:", stats.batches, "slowest recent:", stats.recent_batch_seconds_max)
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("eventlog_writer_events_written_total"):
                print(line)
        data = reader.get_metrics_data()  # what a periodic exporter does every minute
        resources = data.resource_metrics if data is not None else []
        names = {m.name for r in resources for s in r.scope_metrics for m in s.metrics}
        print("OpenTelemetry instruments:", len(names))
        scraped.close()
        collected.close()
    meter_provider.shutdown()

    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(EventLog)) or 0
    engine.dispose()
    print("events stored:", total)
    return total


if __name__ == "__main__":
    main(sys.argv[1])
