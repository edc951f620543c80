"""The prometheus-client collector: reads the writers' stats at scrape time."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.samples import Sample

from eventlog_persist._metric_specs import (
    BATCH_SECONDS_HELP,
    LAST_ERROR_HELP,
    PROMETHEUS_PREFIX,
    SPECS,
    WRITER_LABEL,
    MetricSpec,
    WriterSet,
)
from eventlog_persist._stats import WriterStats
from eventlog_persist.exceptions import ConfigurationError

_BATCH_SECONDS = PROMETHEUS_PREFIX + "batch_seconds"
_LAST_ERROR = PROMETHEUS_PREFIX + "last_error_timestamp_seconds"
_SPECS = [spec for spec in SPECS if spec.prometheus is not None]


def _family(spec: MetricSpec) -> CounterMetricFamily | GaugeMetricFamily:
    name = PROMETHEUS_PREFIX + str(spec.prometheus)
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, labels=[WRITER_LABEL])
    return GaugeMetricFamily(name, spec.help, labels=[WRITER_LABEL])


class WriterCollector:
    """A custom collector: every scrape takes one `WriterStats` snapshot per writer."""

    def __init__(self, writers: WriterSet) -> None:
        self._writers = writers

    def describe(self) -> Iterable[Metric]:
        """The metric names without samples, so a registry refuses a second registration."""
        yield from map(_family, _SPECS)
        yield SummaryMetricFamily(_BATCH_SECONDS, BATCH_SECONDS_HELP, labels=[WRITER_LABEL])
        yield GaugeMetricFamily(_LAST_ERROR, LAST_ERROR_HELP, labels=[WRITER_LABEL])

    def collect(self) -> Iterator[Metric]:
        snapshots = list(self._writers.stats())
        for spec in _SPECS:
            family = _family(spec)
            for name, stats in snapshots:
                value = spec.value(stats)
                if value is not None:
                    family.add_metric([name], value)
            yield family
        yield _batch_seconds(snapshots)
        yield _last_error(snapshots)


def _batch_seconds(snapshots: list[tuple[str, WriterStats]]) -> Metric:
    family = SummaryMetricFamily(_BATCH_SECONDS, BATCH_SECONDS_HELP, labels=[WRITER_LABEL])
    for name, stats in snapshots:
        quantiles = (("0.5", stats.recent_batch_seconds_p50), ("1", stats.recent_batch_seconds_max))
        for quantile, value in quantiles:
            labels = {WRITER_LABEL: name, "quantile": quantile}
            family.samples.append(
                Sample(_BATCH_SECONDS, labels, math.nan if value is None else value)
            )
        family.add_metric([name], stats.batches, stats.batch_seconds_total)
    return family


def _last_error(snapshots: list[tuple[str, WriterStats]]) -> Metric:
    family = GaugeMetricFamily(
        _LAST_ERROR, LAST_ERROR_HELP, labels=[WRITER_LABEL, "type", "sqlstate"]
    )
    for name, stats in snapshots:
        error = stats.last_error
        if error is not None:
            family.add_metric([name, error.type, error.sqlstate or ""], error.at.timestamp())
    return family


def register(writers: WriterSet, registry: CollectorRegistry | None) -> WriterCollector:
    if registry is not None and not isinstance(registry, CollectorRegistry):
        raise ConfigurationError(
            f"registry={registry!r} is not valid; pass a prometheus_client CollectorRegistry, "
            "or None for the default one"
        )
    collector = WriterCollector(writers)
    target = REGISTRY if registry is None else registry
    try:
        target.register(collector)
    except ValueError as exc:  # prometheus-client's DuplicateTimeseries
        raise ConfigurationError(
            "register_prometheus(): this registry already has the eventlog writer metrics "
            f"({exc}); register every writer in one call, by name "
            '(register_prometheus({"api": writer, "jobs": other_writer})), or close() the '
            "earlier registration first"
        ) from exc
    return collector


def unregister(collector: WriterCollector, registry: CollectorRegistry | None) -> None:
    target = REGISTRY if registry is None else registry
    with contextlib.suppress(KeyError):  # the host unregistered it already
        target.unregister(collector)
