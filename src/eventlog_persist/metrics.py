"""Report the buffered writers' stats to prometheus-client or to OpenTelemetry metrics.

Neither library is imported until its ``register_`` function is called; install them with
the extras ``eventlog-persist[prometheus]`` and ``eventlog-persist[opentelemetry]``.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

from eventlog_persist._buffered import AsyncBufferedWriter, BufferedWriter
from eventlog_persist._metric_specs import WriterSet
from eventlog_persist.exceptions import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from prometheus_client import CollectorRegistry

__all__ = [
    "MeteredWriters",
    "MetricsRegistration",
    "register_opentelemetry",
    "register_prometheus",
]

MeteredWriters: TypeAlias = (
    BufferedWriter[Any]
    | AsyncBufferedWriter[Any]
    | Mapping[str, BufferedWriter[Any] | AsyncBufferedWriter[Any]]
)
"""One writer (named ``"default"``), or several by name."""


class MetricsRegistration:
    """What the ``register_`` functions return: `close` stops the reporting.

    .. versionadded:: 0.3.0
    """

    def __init__(self, writers: WriterSet, undo: Callable[[], None]) -> None:
        self._writers = writers
        self._undo: Callable[[], None] | None = undo
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop reporting the writers and let go of them; closing twice is harmless.

        A Prometheus registration leaves the registry. OpenTelemetry has no way to remove an
        instrument, so its instruments stay and report nothing from then on.
        """
        with self._lock:
            undo, self._undo = self._undo, None
        self._writers.clear()
        if undo is not None:
            undo()


def _load(module: str, library: str, extra: str, api: str) -> ModuleType:
    try:
        return import_module(f"eventlog_persist.{module}")
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != library:
            raise
        raise ConfigurationError(
            f"{api}() needs the {library} package, which is not installed: install "
            f"eventlog-persist[{extra}]"
        ) from exc


def register_prometheus(
    writers: MeteredWriters, /, *, registry: CollectorRegistry | None = None
) -> MetricsRegistration:
    """Report the writers' stats in a prometheus-client registry, read at each scrape.

    A custom collector takes one `WriterStats` snapshot per writer at each scrape, so
    nothing is done between scrapes. Every metric has a ``writer`` label: the writer's name,
    ``"default"`` for a single writer. The metrics of this process only: under
    prometheus-client's multiprocess mode (gunicorn workers), scrape each worker.

    Args:
        writers: A `BufferedWriter` or `AsyncBufferedWriter`, or several by name
            (``{"api": writer, "jobs": other_writer}``). Register every writer of a registry
            in one call: the metric names can be registered only once.
        registry: The registry; prometheus-client's default ``REGISTRY`` when None.

    Returns:
        The registration; its `MetricsRegistration.close` unregisters the collector.

    Raises:
        ConfigurationError: prometheus-client is not installed, ``writers`` or ``registry``
            is not valid, or the registry already has these metrics.

    .. versionadded:: 0.3.0
    """
    source = WriterSet(writers, "register_prometheus")
    exporter = _load("_prometheus", "prometheus_client", "prometheus", "register_prometheus")
    collector = exporter.register(source, registry)
    return MetricsRegistration(source, lambda: exporter.unregister(collector, registry))


def register_opentelemetry(
    writers: MeteredWriters, /, *, meter_provider: MeterProvider | None = None
) -> MetricsRegistration:
    """Report the writers' stats as OpenTelemetry observable instruments.

    The instruments' callbacks take a `WriterStats` snapshot per writer at each collection.
    The meter is named ``eventlog_persist``; every observation has the attribute
    ``eventlog.writer.name``: the writer's name, ``"default"`` for a single writer.

    Args:
        writers: A `BufferedWriter` or `AsyncBufferedWriter`, or several by name
            (``{"api": writer, "jobs": other_writer}``). Register every writer of a meter
            provider in one call: OpenTelemetry keeps the first instrument of a name.
        meter_provider: The meter provider; OpenTelemetry's global one when None.

    Returns:
        The registration; after its `MetricsRegistration.close` the instruments report
        nothing, until a new registration on the same meter provider gives them its writers.

    Raises:
        ConfigurationError: opentelemetry-api is not installed, ``writers`` or
            ``meter_provider`` is not valid, or a registration on that meter provider is not
            closed.

    .. versionadded:: 0.3.0
    """
    source = WriterSet(writers, "register_opentelemetry")
    exporter = _load("_opentelemetry", "opentelemetry", "opentelemetry", "register_opentelemetry")
    exporter.register(source, meter_provider)
    return MetricsRegistration(source, lambda: None)
