"""The spool: SIGKILL, torn tails, one writer per spool, adoption, the size cap, fsync."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hostmodels import HostModels, seed
from sqlalchemy import Engine, text

from eventlog_persist import (
    AsyncBufferedWriter,
    BufferedWriter,
    NewEvent,
    RetryPolicy,
    Spool,
    new_event,
)
from eventlog_persist import _spool as spool_module
from eventlog_persist._spool import decode_event, encode_event
from eventlog_persist.exceptions import ConfigurationError, QueueFullError, SpoolInUseError

FAST_RETRY = RetryPolicy(max_attempts=None, max_elapsed=None, initial_delay=0.01, max_delay=0.2)
DOWN = "host=/nonexistent-eventlog-dir port=1 dbname=x"
TESTS = Path(__file__).parent


def stored(engine: Engine) -> list[uuid.UUID]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM event_logs")).scalars())


def files(directory: Path) -> list[str]:
    """Every file under the spool directory, relative to it (the spool's layout)."""
    return sorted(
        str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file()
    )


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*/*.seg"))


class DeadLetters:
    def __init__(self) -> None:
        self.items: list[tuple[NewEvent, BaseException]] = []

    def __call__(self, event: NewEvent, error: BaseException) -> None:
        self.items.append((event, error))


def spool_down(
    models: HostModels, directory: Path, events: list[NewEvent], **options: Any
) -> BufferedWriter[Any]:
    """Spool ``events`` with a writer whose database is down, close it: they stay on disk."""
    writer = BufferedWriter(
        models.EventLog, DOWN, spool=Spool(directory), retry=FAST_RETRY, **options
    ).start()
    for event in events:
        writer.enqueue(event)
    final = writer.close(timeout=0.05)
    assert (final.spilled, final.unwritten, final.dropped) == (len(events), 0, 0)
    return writer


def chat_events(user_id: Any, session_id: Any, count: int) -> list[NewEvent]:
    return [
        new_event(session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i})
        for i in range(count)
    ]


# -- records -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": uuid.uuid4(), "user_id": uuid.uuid4()},
        {
            "session_id": 7,
            "user_id": -(2**63),
            "project_id": 2**63 - 1,
            "agent_id": 0,
            "error_code": "timeout",
            "tool_name": "search",
            "approval_status": "approved",
            "created_at": datetime(
                2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-7))
            ),
        },
        {
            "session_id": uuid.uuid4(),
            "user_id": uuid.uuid4(),
            "agent_id": uuid.uuid4(),
            "payload": {"text": "駅 🍝 \u00e9", "password": "x", "n": [1, 2.5, None]},
            "created_at": datetime(1969, 7, 20, 20, 17, tzinfo=UTC),
        },
    ],
)
def test_a_record_holds_the_whole_event(fields: dict[str, Any]) -> None:
    event = new_event(event_type="tool_call", **fields)
    record = encode_event(event)
    again = decode_event(record[8:])
    assert again == event
    assert again.payload_bytes == event.payload_bytes
    assert again.created_at.utcoffset() == event.created_at.utcoffset()
    assert type(again.session_id) is type(event.session_id)


def test_a_record_of_another_format_version_is_not_read() -> None:
    event = new_event(session_id=1, user_id=2, event_type="x")
    body = bytearray(encode_event(event)[8:])
    assert body[1] == 2  # the version, first in the MessagePack array
    body[1] = 3
    with pytest.raises(ValueError, match="unknown spool record version 3"):
        decode_event(bytes(body))


def test_bad_spool_settings_name_the_value_and_the_fix(
    host_models: HostModels, tmp_path: Path
) -> None:
    for bad in ("sometimes", 0, -1.0, math.nan, math.inf, True, 7200):
        with pytest.raises(ConfigurationError, match=r"Spool\(fsync=.*use 'never', 'always'"):
            Spool(tmp_path, fsync=bad)  # type: ignore[arg-type]
    for size in (0, 100, 2.5, None):
        with pytest.raises(ConfigurationError, match=r"Spool\(max_bytes=.*int >= 4096"):
            Spool(tmp_path, max_bytes=size)  # type: ignore[arg-type]
    for directory in ("", None, 3):
        with pytest.raises(ConfigurationError, match=r"Spool\(directory="):
            Spool(directory)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="spool='spool-dir' is not valid; pass a Spool"):
        BufferedWriter(host_models.EventLog, DOWN, spool="spool-dir")  # type: ignore[arg-type]
    assert Spool(tmp_path, fsync=0.05).fsync == 0.05
    assert Spool(str(tmp_path), fsync="always").fsync == "always"


def test_fsync_policies(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    original = spool_module._fdatasync
    monkeypatch.setattr(spool_module, "_fdatasync", lambda fd: synced.append(fd) or original(fd))
    key = uuid.uuid4()

    def spool_five(policy: Any) -> BufferedWriter[Any]:
        synced.clear()
        writer = BufferedWriter(
            host_models.EventLog, DOWN, spool=Spool(tmp_path / str(policy), fsync=policy)
        )
        for _ in range(5):
            writer.enqueue(session_id=key, user_id=key, event_type="x")
        return writer

    writer = spool_five("never")
    time.sleep(0.05)
    assert synced == []
    writer.close(timeout=0)
    writer = spool_five("always")
    assert len(synced) == 5  # each enqueue waited for its sync
    writer.close(timeout=0)
    writer = spool_five(0.01)
    deadline = time.monotonic() + 5
    while not synced and time.monotonic() < deadline:  # the background thread syncs
        time.sleep(0.01)
    time.sleep(0.05)
    done = len(synced)
    assert 1 <= done <= 5
    time.sleep(0.05)
    assert len(synced) == done  # nothing new written, nothing synced again
    writer.close(timeout=0)


# -- one writer per spool, adoption ----------------------------------------------------------


def test_a_second_writer_on_the_same_spool_is_refused(
    host_models: HostModels, tmp_path: Path
) -> None:
    first = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    with pytest.raises(SpoolInUseError, match="give each writer its own Spool directory"):
        BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    first.close(timeout=0)
    assert files(tmp_path) == []  # nothing left: the process's spool is removed
    BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path)).close(timeout=0)


def test_a_spool_is_for_one_table(host_models: HostModels, tmp_path: Path) -> None:
    key = uuid.uuid4()
    spool_down(host_models, tmp_path, chat_events(key, key, 3))
    name = files(tmp_path)[0].split("/")[0]
    (tmp_path / name / "table").write_text("other.event_logs")
    with pytest.raises(ConfigurationError, match="one Spool directory per destination"):
        BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))


def _spooling_process(
    directory: Path, user_id: Any, session_id: Any, count: int, *, hold: bool
) -> str:
    """A script: spool ``count`` events with the database down, then wait or die."""
    return textwrap.dedent(
        f"""
        import os, signal, sys, uuid
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter, Spool

        models = build_host_models()
        writer = BufferedWriter(models.EventLog, {DOWN!r}, spool=Spool({str(directory)!r}),
                                max_queued=5).start()
        user_id, session_id = uuid.UUID({str(user_id)!r}), uuid.UUID({str(session_id)!r})
        for i in range({count}):
            writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat",
                           payload={{"i": i}})
        print("spooled", flush=True)
        if {hold!r}:
            sys.stdin.read()  # alive until the test kills it
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.fault
@pytest.mark.timeout(60)
def test_a_new_writer_adopts_the_spools_of_dead_processes_only(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with subprocess.Popen(
        [sys.executable, "-c", _spooling_process(tmp_path, user_id, session_id, 20, hold=True)],
        cwd=TESTS,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as alive:
        try:
            assert alive.stdout is not None
            assert alive.stdout.readline() == "spooled\n"
            dead = _run(_spooling_process(tmp_path, user_id, session_id, 30, hold=False))
            assert dead.returncode == -signal.SIGKILL, dead.stderr
            assert len(list(tmp_path.iterdir())) == 2  # one spool per process
            writer = BufferedWriter(
                host_models.EventLog, host_engine.url, spool=Spool(tmp_path)
            ).start()
            assert writer.flush(timeout=20)
            final = writer.close()
            assert (final.replayed, final.written, final.spilled) == (30, 30, 0)
            assert len(stored(host_engine)) == 30
            assert len(list(tmp_path.iterdir())) == 1  # the live process's spool is untouched
        finally:
            alive.kill()
    writer = BufferedWriter(host_models.EventLog, host_engine.url, spool=Spool(tmp_path)).start()
    assert writer.flush(timeout=20)
    assert writer.close().replayed == 20
    assert len(set(stored(host_engine))) == len(stored(host_engine)) == 50
    assert files(tmp_path) == []


# -- SIGKILL -----------------------------------------------------------------------------------

_PRODUCER = """
import os, sys, uuid
from hostmodels import build_host_models
from eventlog_persist import BufferedWriter, Spool

models = build_host_models()
writer = BufferedWriter(models.EventLog, {url!r}, spool=Spool({directory!r}), batch_size=100,
                        flush_interval=0.005).start()
user_id, session_id = uuid.UUID({user_id!r}), uuid.UUID({session_id!r})
log = os.open({log!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
print("started", flush=True)
i = 0
while True:
    event = writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat",
                           payload={{"i": i, "text": "x" * 300}})
    os.write(log, event.id.hex.encode() + b"\\n")  # only after enqueue returned
    i += 1
"""


@pytest.mark.fault
@pytest.mark.timeout(90)
def test_sigkill_at_a_random_moment_loses_nothing_that_enqueue_returned(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    directory, log = tmp_path / "spool", tmp_path / "returned.log"
    seed_ = random.randrange(1 << 30)
    delay = random.Random(seed_).uniform(0.3, 1.2)
    script = _PRODUCER.format(
        url=host_engine.url.render_as_string(hide_password=False),
        directory=str(directory),
        user_id=str(user_id),
        session_id=str(session_id),
        log=str(log),
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=TESTS, stdout=subprocess.PIPE, text=True
    ) as producer:
        assert producer.stdout is not None
        assert producer.stdout.readline() == "started\n"
        time.sleep(delay)  # under load: enqueueing, and batches being written meanwhile
        producer.send_signal(signal.SIGKILL)
        assert producer.wait(10) == -signal.SIGKILL
    returned = [uuid.UUID(line) for line in log.read_text().split()]
    before = set(stored(host_engine))
    writer = BufferedWriter(host_models.EventLog, host_engine.url, spool=Spool(directory)).start()
    assert writer.flush(timeout=30)
    final = writer.close()
    rows = stored(host_engine)
    why = f"seed {seed_}, killed after {delay:.2f}s, {len(returned)} returned"
    assert len(returned) > 100, why
    assert len(rows) == len(set(rows)), why  # each stored once
    assert set(returned) <= set(rows), why  # none lost
    assert len(set(rows) - set(returned)) <= 1, why  # at most the one enqueue cut short
    assert final.replayed >= len(set(rows) - before), why
    assert (final.dead_lettered, final.spilled) == (0, 0), why
    # The kill may cut the write() of the record being appended (the kernel stops a write at
    # a page boundary for SIGKILL): a torn tail, whose enqueue never returned.
    assert final.spool_damaged <= 1, why
    assert files(directory) == []


# -- torn records, the size cap, spilling and reading back ------------------------------------


@pytest.mark.fault
def test_a_torn_tail_and_a_damaged_record_are_skipped_and_reported(
    host_engine: Engine,
    host_models: HostModels,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = chat_events(user_id, session_id, 20)
    spool_down(host_models, tmp_path, events)
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    records = [encode_event(event) for event in events]
    assert bytes(data) == b"".join(records)
    middle = sum(map(len, records[:10])) + 30
    data[middle] ^= 0xFF  # a flipped byte in the 11th record's body
    segment.write_bytes(bytes(data[:-5]))  # and the last record cut short
    with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
        writer = BufferedWriter(
            host_models.EventLog, host_engine.url, spool=Spool(tmp_path)
        ).start()
        assert writer.flush(timeout=20)
    final = writer.close()
    assert (final.replayed, final.written, final.spool_damaged) == (18, 18, 2)
    assert set(stored(host_engine)) == {event.id for event in events} - {
        events[10].id,
        events[19].id,
    }
    messages = [record.getMessage() for record in caplog.records]
    assert any("a damaged record at byte" in message for message in messages), messages
    assert any("a torn record (cut short by a crash)" in message for message in messages)
    assert files(tmp_path) == []


@pytest.mark.fault
def test_the_size_cap_drops_and_reports(host_models: HostModels, tmp_path: Path) -> None:
    dead = DeadLetters()
    key = uuid.uuid4()
    events = [
        new_event(session_id=key, user_id=key, event_type="x", payload={"t": "x" * 900})
        for _ in range(40)
    ]
    writer = BufferedWriter(
        host_models.EventLog,
        DOWN,
        spool=Spool(tmp_path, max_bytes=16 * 1024),
        max_queued=4,
        retry=FAST_RETRY,
        on_dead_letter=dead,
    ).start()
    for event in events:
        writer.enqueue(event)
    counters = writer.counters
    on_disk = sum(path.stat().st_size for path in segments(tmp_path))
    assert on_disk <= 16 * 1024
    assert counters.queued == 4
    assert counters.queued + counters.spilled == 16 * 1024 // len(encode_event(events[0]))
    assert counters.dropped == len(dead.items) == 40 - counters.queued - counters.spilled
    assert [event for event, _ in dead.items] == events[40 - counters.dropped :]
    assert all(isinstance(error, QueueFullError) for _, error in dead.items)
    assert "the spool is full (16384 bytes)" in str(dead.items[0][1])
    final = writer.close(timeout=0.05)
    assert final.spilled == 40 - final.dropped  # left on the spool, not reported
    assert len(dead.items) == final.dropped


@pytest.mark.fault
@pytest.mark.timeout(60)
def test_spilled_events_are_read_back_through_a_small_queue_and_segments_trimmed(
    host_engine: Engine,
    host_models: HostModels,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 4096)
    user_id, session_id = seed(host_engine, host_models)
    old = chat_events(user_id, session_id, 300)
    spool_down(host_models, tmp_path, old, max_queued=10)
    assert len(segments(tmp_path)) > 5
    new = chat_events(user_id, session_id, 200)
    with BufferedWriter(
        host_models.EventLog,
        host_engine.url,
        spool=Spool(tmp_path),
        max_queued=10,
        batch_size=7,
    ) as writer:
        for event in new:  # behind the replay: spilled, then read back in turn
            writer.enqueue(event)
            assert writer.counters.queued <= 10
        assert writer.flush(timeout=30)
        counters = writer.counters
        assert len(segments(tmp_path)) <= 2  # acknowledged segments were deleted
    assert (counters.replayed, counters.written, counters.spilled) == (300, 500, 0)
    rows = stored(host_engine)
    assert sorted(rows) == sorted(event.id for event in old + new)
    assert files(tmp_path) == []


@pytest.mark.fault
@pytest.mark.asyncio
async def test_async_writer_spools_and_replays(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = chat_events(user_id, session_id, 25)
    writer = await AsyncBufferedWriter(
        host_models.EventLog, DOWN, spool=Spool(tmp_path), max_queued=5, retry=FAST_RETRY
    ).start()
    for event in events:
        await writer.enqueue(event)
    assert (await writer.close(timeout=0.05)).spilled == 25
    async with AsyncBufferedWriter(
        host_models.EventLog, host_engine.url, spool=Spool(tmp_path), max_queued=5
    ) as again:
        assert await again.flush(timeout=20)
    assert (again.counters.replayed, again.counters.written) == (25, 25)
    assert sorted(stored(host_engine)) == sorted(event.id for event in events)
    assert files(tmp_path) == []


def test_a_forked_child_lets_go_of_the_parents_spool(
    host_models: HostModels, tmp_path: Path
) -> None:
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    key = uuid.uuid4()
    writer.enqueue(session_id=key, user_id=key, event_type="x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = writer._state.journal is None and writer.counters.spilled == 0
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    final = writer.close(timeout=0)
    assert final.spilled == 1  # the parent's spool is intact
    assert len(segments(tmp_path)) == 1


def test_a_failed_spool_write_drops_and_reports_and_leaves_no_partial_record(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = DeadLetters()
    key = uuid.uuid4()
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path), on_dead_letter=dead)
    first, second, third = (new_event(session_id=key, user_id=key, event_type="x") for _ in "abc")
    writer.enqueue(first)
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[:10])  # the disk filled up mid-record

    monkeypatch.setattr(spool_module.os, "write", short_write)
    writer.enqueue(second)
    monkeypatch.setattr(spool_module.os, "write", real_write)
    writer.enqueue(third)
    assert [event for event, _ in dead.items] == [second]
    assert "the spool could not be written" in str(dead.items[0][1])
    assert writer.counters.dropped == 1
    [segment] = segments(tmp_path)
    assert segment.read_bytes() == encode_event(first) + encode_event(third)
    writer.close(timeout=0)


@pytest.mark.fault
@pytest.mark.timeout(60)
def test_concurrent_producers_spill_and_read_back_without_loss_or_doubles(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with BufferedWriter(
        host_models.EventLog,
        host_engine.url,
        spool=Spool(tmp_path),
        max_queued=40,
        batch_size=15,
        flush_interval=0.001,
    ) as writer:

        def produce(worker: int) -> None:
            for i in range(400):
                writer.enqueue(
                    session_id=session_id,
                    user_id=user_id,
                    event_type="chat",
                    payload={"w": worker, "i": i},
                )

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        most_spilled = 0
        while any(thread.is_alive() for thread in threads):
            most_spilled = max(most_spilled, writer.counters.spilled)
        for thread in threads:
            thread.join()
        assert writer.flush(timeout=30)
    final = writer.counters
    assert most_spilled > 0  # the queue overflowed to the spool and was read back
    rows = stored(host_engine)
    assert len(rows) == len(set(rows)) == 1600
    assert (final.written, final.dropped, final.spilled, final.dead_lettered) == (1600, 0, 0, 0)
    assert files(tmp_path) == []
