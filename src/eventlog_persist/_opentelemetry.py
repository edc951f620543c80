"""The OpenTelemetry instruments: observable ones, whose callbacks read the writers' stats."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import version

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    Observation,
    get_meter_provider,
)

from eventlog_persist._metric_specs import SPECS, WRITER_ATTRIBUTE, MetricSpec, WriterSet
from eventlog_persist._stats import WriterStats
from eventlog_persist.exceptions import ConfigurationError

METER_NAME = "eventlog_persist"

_Callback = Callable[[CallbackOptions], Iterable[Observation]]


class _Instruments:
    """The instruments made on one meter provider, reporting the writers registered now:
    OpenTelemetry keeps the first instrument of a name, so a registration after `close`
    (a new application lifespan) must reuse them, not make new ones it would ignore."""

    def __init__(self, writers: WriterSet) -> None:
        self.writers = writers

    def stats(self) -> Iterator[tuple[str, WriterStats]]:
        return self.writers.stats()


_made: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()
# Those of the global provider, whatever object it is: made through OpenTelemetry's stand-in
# before the application sets its provider, they move to that provider when it is set.
_made_global: _Instruments | None = None
_lock = threading.Lock()


def _observe(writers: _Instruments, spec: MetricSpec) -> _Callback:
    def callback(options: CallbackOptions) -> list[Observation]:
        observations = []
        for name, stats in writers.stats():
            value = spec.value(stats)
            if value is not None:
                observations.append(Observation(value, {WRITER_ATTRIBUTE: name}))
        return observations

    return callback


def _observe_last_error(writers: _Instruments) -> _Callback:
    def callback(options: CallbackOptions) -> list[Observation]:
        observations = []
        for name, stats in writers.stats():
            error = stats.last_error
            if error is not None:
                attributes = {WRITER_ATTRIBUTE: name, "error.type": error.type}
                if error.sqlstate is not None:
                    attributes["db.response.status_code"] = error.sqlstate
                observations.append(Observation(error.at.timestamp(), attributes))
        return observations

    return callback


def register(writers: WriterSet, meter_provider: MeterProvider | None) -> None:
    if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
        raise ConfigurationError(
            f"meter_provider={meter_provider!r} is not valid; pass an OpenTelemetry "
            "MeterProvider, or None for the global one"
        )
    global _made_global
    provider = get_meter_provider() if meter_provider is None else meter_provider
    is_global = provider is get_meter_provider()
    with _lock:
        try:
            made = _made.get(provider)
        except TypeError:  # a provider that takes no weak reference: made for each call
            made = None
        if made is None and is_global:
            made = _made_global
        if made is not None:
            if made.writers.live:
                raise ConfigurationError(
                    "register_opentelemetry() has writers on this meter provider already, "
                    "and OpenTelemetry keeps the first instrument of a name: register every "
                    "writer in one call ({'api': writer, 'jobs': other_writer}), or close() "
                    "the first registration before registering again"
                )
            made.writers = writers
            return
        made = _Instruments(writers)
        _make(provider, made)
        with contextlib.suppress(TypeError):
            _made[provider] = made
        if is_global:
            _made_global = made


def _make(provider: MeterProvider, writers: _Instruments) -> None:
    meter: Meter = provider.get_meter(METER_NAME, version("eventlog-persist"))
    create = {
        "counter": meter.create_observable_counter,
        "updown": meter.create_observable_up_down_counter,
        "gauge": meter.create_observable_gauge,
    }
    for spec in SPECS:
        create[spec.kind](
            spec.opentelemetry,
            callbacks=[_observe(writers, spec)],
            unit=spec.unit,
            description=spec.help,
        )
    meter.create_observable_gauge(
        "eventlog.writer.last_error.time",
        callbacks=[_observe_last_error(writers)],
        unit="s",
        description="Unix time of the latest error, with its type and SQLSTATE as attributes.",
    )
