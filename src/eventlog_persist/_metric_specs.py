"""The metrics the exporters report for each buffered writer: names, kinds, units, values."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from eventlog_persist._buffered import AsyncBufferedWriter, BufferedWriter
from eventlog_persist._stats import WriterStats
from eventlog_persist.exceptions import ConfigurationError

AnyWriter: TypeAlias = BufferedWriter[Any] | AsyncBufferedWriter[Any]

Kind: TypeAlias = Literal["counter", "updown", "gauge"]
"""A total that only grows, a level that adds up across writers, a level that does not."""

PROMETHEUS_PREFIX = "eventlog_writer_"
WRITER_LABEL = "writer"
WRITER_ATTRIBUTE = "eventlog.writer.name"
DEFAULT_WRITER_NAME = "default"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its name in each ecosystem (None: Prometheus has it in a summary)."""

    prometheus: str | None  # without the prefix and, for a counter, the ``_total`` suffix
    opentelemetry: str
    kind: Kind
    unit: str  # UCUM, as OpenTelemetry wants it
    help: str
    value: Callable[[WriterStats], float | None]  # None: no sample


def _oldest_age(stats: WriterStats) -> float:
    return stats.oldest_queued_age or 0.0


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "events_written",
        "eventlog.writer.events.written",
        "counter",
        "{event}",
        "Events stored (inserted, or found already stored by an idempotent retry).",
        lambda s: s.counters.written,
    ),
    MetricSpec(
        "events_duplicate",
        "eventlog.writer.events.duplicate",
        "counter",
        "{event}",
        "Of the events written, those that were already stored.",
        lambda s: s.counters.duplicates,
    ),
    MetricSpec(
        "events_dead_lettered",
        "eventlog.writer.events.dead_lettered",
        "counter",
        "{event}",
        "Events given up on while writing (refused, past the retry policy, unexpected error).",
        lambda s: s.counters.dead_lettered,
    ),
    MetricSpec(
        "events_dropped",
        "eventlog.writer.events.dropped",
        "counter",
        "{event}",
        "Events refused at enqueue because the queue (or the spool) stayed full.",
        lambda s: s.counters.dropped,
    ),
    MetricSpec(
        "events_unwritten",
        "eventlog.writer.events.unwritten",
        "counter",
        "{event}",
        "Events still queued or being written when close() gave up waiting.",
        lambda s: s.counters.unwritten,
    ),
    MetricSpec(
        "events_replayed",
        "eventlog.writer.events.replayed",
        "counter",
        "{event}",
        "Events read back from the spools of earlier writers.",
        lambda s: s.counters.replayed,
    ),
    MetricSpec(
        "retries",
        "eventlog.writer.retries",
        "counter",
        "{retry}",
        "Transient write failures that were retried.",
        lambda s: s.counters.retried,
    ),
    MetricSpec(
        "read_only_retries",
        "eventlog.writer.retries.read_only",
        "counter",
        "{retry}",
        "Of the retries, those because the database accepted only reads.",
        lambda s: s.counters.read_only_retries,
    ),
    MetricSpec(
        "errors",
        "eventlog.writer.errors",
        "counter",
        "{error}",
        "Unexpected errors inside the writer loop (logged; the loop went on).",
        lambda s: s.counters.errors,
    ),
    MetricSpec(
        "spool_damaged_records",
        "eventlog.writer.spool.damaged",
        "counter",
        "{record}",
        "Damaged spool records skipped.",
        lambda s: s.counters.spool_damaged,
    ),
    MetricSpec(
        None,
        "eventlog.writer.batches",
        "counter",
        "{batch}",
        "Batches whose write finished.",
        lambda s: s.batches,
    ),
    MetricSpec(
        None,
        "eventlog.writer.batch.time",
        "counter",
        "s",
        "Seconds spent writing batches, retries and waits for the database included.",
        lambda s: s.batch_seconds_total,
    ),
    MetricSpec(
        "queue_depth",
        "eventlog.writer.queue.depth",
        "updown",
        "{event}",
        "Events queued in memory, the batch being written included.",
        lambda s: s.counters.queued,
    ),
    MetricSpec(
        "queue_bytes",
        "eventlog.writer.queue.size",
        "updown",
        "By",
        "Estimated size of the queued events.",
        lambda s: s.counters.queued_bytes,
    ),
    MetricSpec(
        "spilled_events",
        "eventlog.writer.spool.spilled",
        "updown",
        "{event}",
        "Events on the spool only, waiting to be read back into the queue.",
        lambda s: s.counters.spilled,
    ),
    MetricSpec(
        "oldest_queued_age_seconds",
        "eventlog.writer.queue.oldest_age",
        "gauge",
        "s",
        "Seconds the oldest event in memory has waited; 0 when the queue is empty.",
        _oldest_age,
    ),
    MetricSpec(
        "last_batch_seconds",
        "eventlog.writer.batch.duration.last",
        "gauge",
        "s",
        "Write time of the latest batch.",
        lambda s: s.last_batch_seconds,
    ),
    MetricSpec(
        None,
        "eventlog.writer.batch.duration.p50",
        "gauge",
        "s",
        "Median write time of the latest 100 batches.",
        lambda s: s.recent_batch_seconds_p50,
    ),
    MetricSpec(
        None,
        "eventlog.writer.batch.duration.max",
        "gauge",
        "s",
        "Longest write time of the latest 100 batches.",
        lambda s: s.recent_batch_seconds_max,
    ),
)

BATCH_SECONDS_HELP = (
    "Batch write times: count and sum of all batches, quantiles of the latest 100 "
    "(retries and waits for the database included)."
)
LAST_ERROR_HELP = (
    "Unix time of the latest error, labelled with its type and SQLSTATE; absent before the "
    "first error."
)


class WriterSet:
    """The writers an exporter reports, by name; empty once the exporter is closed."""

    def __init__(self, writers: AnyWriter | Mapping[str, AnyWriter], api: str) -> None:
        self._writers = _named(writers, api)

    def stats(self) -> Iterator[tuple[str, WriterStats]]:
        for name, writer in list(self._writers.items()):
            yield name, writer.stats

    def clear(self) -> None:
        self._writers = {}

    @property
    def live(self) -> bool:
        """Whether the exporter is not closed yet."""
        return bool(self._writers)


def _named(writers: object, api: str) -> dict[str, AnyWriter]:
    kinds = (BufferedWriter, AsyncBufferedWriter)
    if isinstance(writers, kinds):
        return {DEFAULT_WRITER_NAME: writers}
    if not isinstance(writers, Mapping) or not writers:
        raise ConfigurationError(
            f"{api}({writers!r}) is not valid; pass a BufferedWriter or AsyncBufferedWriter, "
            'or a dict of them by name: {"api": writer, "jobs": other_writer}'
        )
    named: dict[str, AnyWriter] = {}
    for name, writer in writers.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"{api}(): the writer name {name!r} is not valid; use a non-empty string, "
                "which becomes the metrics' writer label"
            )
        if not isinstance(writer, kinds):
            raise ConfigurationError(
                f"{api}(): the writer named {name!r} is {writer!r}; pass a BufferedWriter "
                "or AsyncBufferedWriter"
            )
        named[name] = writer
    return named
