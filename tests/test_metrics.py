"""Writer stats, and their export to prometheus-client and OpenTelemetry (real registries)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from hostmodels import HostModels, seed
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from waiting import wait_for

import eventlog_persist
from eventlog_persist import (
    AsyncBufferedWriter,
    BufferedWriter,
    RetryPolicy,
    WriterStats,
    new_event,
)
from eventlog_persist.exceptions import ConfigurationError
from eventlog_persist.metrics import register_opentelemetry, register_prometheus

FAST_RETRY = RetryPolicy(max_attempts=None, max_elapsed=None, initial_delay=0.01, max_delay=0.05)
DOWN = "host=/nonexistent-eventlog-dir port=1 dbname=x"
SECRET = "s3cret-payload-text"


def write_some(writer: BufferedWriter[Any], keys: tuple[Any, Any], count: int) -> None:
    user_id, session_id = keys
    for i in range(count):
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i})
    assert writer.flush(timeout=10)


def prometheus_samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[Any]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# -- the snapshot ----------------------------------------------------------------------------


def test_stats_after_writes(host_engine: Engine, host_models: HostModels) -> None:
    keys = seed(host_engine, host_models)
    started = time.monotonic()
    with BufferedWriter(host_models.EventLog, host_engine, batch_size=10) as writer:
        before = writer.stats
        assert (before.batches, before.last_batch_seconds, before.last_error) == (0, None, None)
        assert before.oldest_queued_age is None
        write_some(writer, keys, 30)
        stats = writer.stats
    elapsed = time.monotonic() - started
    assert isinstance(stats, WriterStats)
    assert stats.counters == writer.counters
    assert (stats.counters.written, stats.counters.queued, stats.counters.queued_bytes) == (
        30,
        0,
        0,
    )
    assert stats.oldest_queued_age is None
    assert stats.batches >= 3
    assert stats.last_batch_seconds is not None
    assert stats.last_batch_seconds > 0
    assert stats.recent_batch_seconds_p50 is not None
    assert stats.recent_batch_seconds_max is not None
    assert 0 < stats.recent_batch_seconds_p50 <= stats.recent_batch_seconds_max
    assert stats.recent_batch_seconds_max <= stats.batch_seconds_total < elapsed
    assert stats.last_error is None


def test_a_dead_letter_is_the_last_error_without_its_content(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, _ = seed(host_engine, host_models)
    orphan = new_event(
        session_id=host_models.new_key(), user_id=user_id, event_type="x", payload={"k": SECRET}
    )
    with BufferedWriter(host_models.EventLog, host_engine, on_dead_letter=lambda e, x: None) as w:
        w.enqueue(orphan)
        assert w.flush(timeout=10)
        stats = w.stats
    error = stats.last_error
    assert error is not None
    assert stats.counters.dead_lettered == 1
    assert (error.type, error.sqlstate, error.retried) == ("EventWriteError", "23503", False)
    assert str(orphan.id) in error.message
    assert SECRET not in error.message
    assert "\n" not in error.message
    assert datetime.now(UTC) - error.at < timedelta(seconds=30)
    assert stats.batches == 1  # a refused batch is a finished write


@pytest.mark.fault
def test_queue_depth_and_oldest_age_while_the_database_is_down(host_models: HostModels) -> None:
    key = host_models.new_key()
    writer = BufferedWriter(host_models.EventLog, DOWN, retry=FAST_RETRY, flush_interval=0.01)
    events = [
        new_event(session_id=key, user_id=key, event_type="x", payload={"k": SECRET})
        for _ in range(5)
    ]
    try:
        writer.start()
        for event in events:
            writer.enqueue(event)
        time.sleep(0.3)
        wait_for(lambda: writer.stats.last_error is not None, 10, "the first failed attempt")
        stats = writer.stats
    finally:
        writer.close(timeout=0.1)
    assert stats.counters.queued == 5
    assert stats.counters.queued_bytes == sum(event.size_bytes for event in events)
    assert stats.oldest_queued_age is not None
    assert 0.25 <= stats.oldest_queued_age < 30
    assert (stats.batches, stats.last_batch_seconds) == (0, None)  # still being written
    assert stats.counters.retried >= 1
    error = stats.last_error
    assert error is not None
    assert (error.type, error.sqlstate, error.retried) == ("OperationalError", None, True)
    assert SECRET not in error.message
    closed = writer.stats
    assert (closed.counters.queued, closed.oldest_queued_age) == (0, None)
    assert closed.last_error is not None
    assert closed.last_error.type == "WriterClosedError"


@pytest.mark.asyncio
async def test_async_stats_read_from_a_scrape_thread(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    registry = CollectorRegistry()
    writer = AsyncBufferedWriter(
        host_models.EventLog,
        database_url.render_as_string(hide_password=False),
        batch_size=50,
        flush_interval=0.01,
    )
    registration = register_prometheus({"events": writer}, registry=registry)
    stop = threading.Event()
    scrapes: list[bytes] = []

    def scrape() -> None:  # as prometheus-client's HTTP server thread does
        while not stop.is_set():
            scrapes.append(generate_latest(registry))

    scraper = threading.Thread(target=scrape)
    started = time.monotonic()
    async with writer:
        scraper.start()
        try:
            for i in range(600):
                await writer.enqueue(
                    session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i}
                )
                if i % 100 == 0:
                    await asyncio.sleep(0.01)
            assert await writer.flush(timeout=20)
            in_thread = await asyncio.to_thread(lambda: writer.stats)
        finally:
            stop.set()
            scraper.join()
    elapsed = time.monotonic() - started
    registration.close()
    assert len(scrapes) > 1
    assert in_thread.counters.written == 600
    assert in_thread.batches >= 12
    assert in_thread.last_batch_seconds is not None
    assert 0 < in_thread.last_batch_seconds <= in_thread.batch_seconds_total < elapsed
    samples = prometheus_samples(registry)
    assert not [name for name, _ in samples if name.startswith("eventlog_")]


# -- Prometheus ------------------------------------------------------------------------------


def test_prometheus_samples_match_the_snapshots(
    host_engine: Engine, host_models: HostModels
) -> None:
    keys = seed(host_engine, host_models)
    registry = CollectorRegistry()
    idle = BufferedWriter(host_models.EventLog, DOWN)  # never started: its events wait
    idle.enqueue(session_id=keys[1], user_id=keys[0], event_type="chat")
    with BufferedWriter(host_models.EventLog, host_engine, batch_size=10) as writer:
        registration = register_prometheus({"api": writer, "jobs": idle}, registry=registry)
        write_some(writer, keys, 25)
        samples = prometheus_samples(registry)
        api, jobs = writer.stats, idle.stats
    idle.close(timeout=0)

    def value(name: str, writer: str, **labels: str) -> float:
        return samples[name, frozenset({"writer": writer, **labels}.items())]

    assert value("eventlog_writer_events_written_total", "api") == 25 == api.counters.written
    assert value("eventlog_writer_events_written_total", "jobs") == 0
    assert value("eventlog_writer_retries_total", "api") == api.counters.retried
    assert value("eventlog_writer_queue_depth", "api") == 0
    assert value("eventlog_writer_queue_depth", "jobs") == 1 == jobs.counters.queued
    assert value("eventlog_writer_queue_bytes", "jobs") == jobs.counters.queued_bytes
    assert value("eventlog_writer_oldest_queued_age_seconds", "api") == 0
    assert value("eventlog_writer_oldest_queued_age_seconds", "jobs") > 0
    assert value("eventlog_writer_batch_seconds_count", "api") == api.batches >= 3
    assert value("eventlog_writer_batch_seconds_sum", "api") == pytest.approx(
        api.batch_seconds_total
    )
    assert value("eventlog_writer_batch_seconds", "api", quantile="1") == pytest.approx(
        api.recent_batch_seconds_max
    )
    assert value("eventlog_writer_batch_seconds", "api", quantile="0.5") > 0
    assert value("eventlog_writer_last_batch_seconds", "api") == pytest.approx(
        api.last_batch_seconds
    )
    assert ("eventlog_writer_last_batch_seconds", frozenset({("writer", "jobs")})) not in samples
    assert not [
        name for name, _ in samples if name == "eventlog_writer_last_error_timestamp_seconds"
    ]

    with pytest.raises(ConfigurationError, match="register every writer in one call"):
        register_prometheus(writer, registry=registry)
    registration.close()
    registration.close()
    assert not [name for name, _ in prometheus_samples(registry) if name.startswith("eventlog_")]
    again = register_prometheus(writer, registry=registry)  # the default name
    assert (
        prometheus_samples(registry)[
            "eventlog_writer_events_written_total", frozenset({("writer", "default")})
        ]
        == 25
    )
    again.close()


def test_prometheus_last_error_has_type_and_sqlstate(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, _ = seed(host_engine, host_models)
    registry = CollectorRegistry()
    with BufferedWriter(host_models.EventLog, host_engine, on_dead_letter=lambda e, x: None) as w:
        registration = register_prometheus(w, registry=registry)
        w.enqueue(session_id=host_models.new_key(), user_id=user_id, event_type="x")
        assert w.flush(timeout=10)
        samples = prometheus_samples(registry)
        error = w.stats.last_error
    registration.close()
    assert error is not None
    labels = {"writer": "default", "type": "EventWriteError", "sqlstate": "23503"}
    timestamp = samples["eventlog_writer_last_error_timestamp_seconds", frozenset(labels.items())]
    assert timestamp == pytest.approx(error.at.timestamp())
    dead = samples["eventlog_writer_events_dead_lettered_total", frozenset({("writer", "default")})]
    assert dead == 1


# -- OpenTelemetry ---------------------------------------------------------------------------


def otel_points(reader: InMemoryMetricReader) -> dict[str, dict[str, Any]]:
    """Metric name -> writer name -> data point."""
    data = reader.get_metrics_data()
    points: dict[str, dict[str, Any]] = {}
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "eventlog_persist"
            assert scope.scope.version == eventlog_persist.__version__
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    name = str(point.attributes["eventlog.writer.name"])
                    points.setdefault(metric.name, {})[name] = point
    return points


def test_opentelemetry_points_match_the_snapshots(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    idle = BufferedWriter(host_models.EventLog, DOWN)
    idle.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
    try:
        with BufferedWriter(
            host_models.EventLog, host_engine, batch_size=10, on_dead_letter=lambda e, x: None
        ) as writer:
            registration = register_opentelemetry(
                {"api": writer, "jobs": idle}, meter_provider=provider
            )
            write_some(writer, (user_id, session_id), 20)
            writer.enqueue(session_id=host_models.new_key(), user_id=user_id, event_type="x")
            assert writer.flush(timeout=10)
            points = otel_points(reader)
            api, jobs = writer.stats, idle.stats
        registration.close()
        after = otel_points(reader)
    finally:
        idle.close(timeout=0)
        provider.shutdown()

    assert points["eventlog.writer.events.written"]["api"].value == 20 == api.counters.written
    assert points["eventlog.writer.events.dead_lettered"]["api"].value == 1
    assert points["eventlog.writer.events.written"]["jobs"].value == 0
    assert points["eventlog.writer.queue.depth"]["jobs"].value == 1 == jobs.counters.queued
    assert points["eventlog.writer.queue.size"]["jobs"].value == jobs.counters.queued_bytes
    assert points["eventlog.writer.queue.oldest_age"]["jobs"].value > 0
    assert points["eventlog.writer.batches"]["api"].value == api.batches >= 3
    assert points["eventlog.writer.batch.time"]["api"].value == pytest.approx(
        api.batch_seconds_total
    )
    assert points["eventlog.writer.batch.duration.max"]["api"].value == pytest.approx(
        api.recent_batch_seconds_max
    )
    assert "jobs" not in points["eventlog.writer.batch.duration.last"]  # no batch yet
    error = points["eventlog.writer.last_error.time"]["api"]
    assert api.last_error is not None
    assert error.value == pytest.approx(api.last_error.at.timestamp())
    assert error.attributes["error.type"] == "EventWriteError"
    assert error.attributes["db.response.status_code"] == "23503"
    assert "api" not in after.get("eventlog.writer.events.written", {})


def test_opentelemetry_registers_again_after_close_and_refuses_a_second_live_registration(
    host_models: HostModels,
) -> None:
    """A new application lifespan registers its new writer on the same meter provider: the
    instruments of the first registration report it (OpenTelemetry ignores new instruments of
    the same names). While a registration is live, a second one is refused."""
    key = host_models.new_key()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = BufferedWriter(host_models.EventLog, DOWN)
    second = BufferedWriter(host_models.EventLog, DOWN)
    try:
        registration = register_opentelemetry(first, meter_provider=provider)
        with pytest.raises(ConfigurationError, match="close\\(\\) the first registration"):
            register_opentelemetry({"jobs": second}, meter_provider=provider)
        assert otel_points(reader)["eventlog.writer.queue.depth"] == {"default": ANY}
        registration.close()
        assert "eventlog.writer.queue.depth" not in otel_points(reader)
        second.enqueue(session_id=key, user_id=key, event_type="chat")
        again = register_opentelemetry({"jobs": second}, meter_provider=provider)
        depth = otel_points(reader)["eventlog.writer.queue.depth"]
        assert list(depth) == ["jobs"]
        assert depth["jobs"].value == 1
        again.close()
    finally:
        first.close(timeout=0)
        second.close(timeout=0)
        provider.shutdown()


_GLOBAL_PROVIDER_SET_LATE = """
from hostmodels import build_host_models
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from eventlog_persist import BufferedWriter
from eventlog_persist.metrics import register_opentelemetry

model = build_host_models().EventLog
key = build_host_models().new_key()
early, late = (BufferedWriter(model, {down!r}) for _ in range(2))
register_opentelemetry(early).close()  # before the application set its provider
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
late.enqueue(session_id=key, user_id=key, event_type="chat")
register_opentelemetry({{"jobs": late}})
points = [
    (point.attributes["eventlog.writer.name"], point.value)
    for resource in reader.get_metrics_data().resource_metrics
    for scope in resource.scope_metrics
    for metric in scope.metrics
    if metric.name == "eventlog.writer.queue.depth"
    for point in metric.data.data_points
]
print(points)
early.close(timeout=0)
late.close(timeout=0)
"""


def test_opentelemetry_registers_again_on_the_global_provider_set_after_the_first() -> None:
    """A registration through OpenTelemetry's stand-in provider, closed, then one after the
    application set its provider (the stand-in's instruments moved there): the second
    reports its writers through them. A process of its own: the global provider is set once."""
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _GLOBAL_PROVIDER_SET_LATE.format(down=DOWN)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('jobs', 1)]"


# -- configuration and optional imports ------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "register", "extra"),
    [
        ("prometheus_client", register_prometheus, "prometheus"),
        ("opentelemetry", register_opentelemetry, "opentelemetry"),
    ],
)
def test_a_missing_library_names_the_extra(
    host_models: HostModels,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    register: Any,
    extra: str,
) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] == module or name.startswith("eventlog_persist._" + module[:5]):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # what the import system does when absent
    writer = BufferedWriter(host_models.EventLog, DOWN)
    with pytest.raises(ConfigurationError, match=rf"install eventlog-persist\[{extra}\]"):
        register(writer)
    writer.close(timeout=0)


@pytest.mark.parametrize("register", [register_prometheus, register_opentelemetry])
def test_bad_writers_are_refused(host_models: HostModels, register: Any) -> None:
    writer = BufferedWriter(host_models.EventLog, DOWN)
    with pytest.raises(ConfigurationError, match="pass a BufferedWriter or AsyncBufferedWriter"):
        register(object())
    with pytest.raises(ConfigurationError, match="pass a BufferedWriter or AsyncBufferedWriter"):
        register({})
    with pytest.raises(ConfigurationError, match="the writer name '' is not valid"):
        register({"": writer})
    with pytest.raises(ConfigurationError, match="the writer named 'a' is 1"):
        register({"a": 1})
    where = "registry" if register is register_prometheus else "meter_provider"
    with pytest.raises(ConfigurationError, match=f"{where}='default' is not valid; pass an? "):
        register(writer, **{where: "default"})
    writer.close(timeout=0)


_LIGHT_IMPORT = """
import sys
import eventlog_persist
import eventlog_persist.metrics
loaded = sorted(n for n in sys.modules if n.split(".")[0] in ("prometheus_client", "opentelemetry"))
assert not loaded, loaded
"""


def test_importing_the_package_imports_no_metrics_library() -> None:
    source = str(Path(eventlog_persist.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", _LIGHT_IMPORT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
