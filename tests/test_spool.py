"""The spool: SIGKILL, torn tails, one writer per spool, adoption, the size cap, fsync."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import math
import os
import random
import resource
import shutil
import signal
import socket
import stat
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

import msgspec
import pytest
from hostmodels import HostModels, seed
from sqlalchemy import Engine, text
from waiting import cancel_the_write_then_close, wait_for

from eventlog_persist import (
    AsyncBufferedWriter,
    BufferedWriter,
    DeadLetterHook,
    NewEvent,
    RetryPolicy,
    Spool,
    WriterCounters,
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


def written(segment: Path) -> bytes:
    """A segment's records: without the zeros its writer reserved after them, while open."""
    data = segment.read_bytes()
    at = 0
    while at + 8 <= len(data) and (length := int.from_bytes(data[at : at + 4], "little")):
        at += 8 + length
    return data[:at]


class DeadLetters:
    def __init__(self) -> None:
        self.items: list[tuple[NewEvent, BaseException]] = []

    def __call__(self, event: NewEvent, error: BaseException) -> None:
        self.items.append((event, error))


def _giving_up(
    host_models: HostModels, tmp_path: Path, hook: DeadLetterHook, **settings: Any
) -> BufferedWriter[Any]:
    """A spooled writer on a database that is down, giving each batch up at once."""
    return BufferedWriter(
        host_models.EventLog,
        DOWN,
        spool=Spool(tmp_path),
        retry=RetryPolicy(max_attempts=1),
        on_dead_letter=hook,
        **settings,
    )


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


@pytest.fixture(params=["mapped", "pwrite"])
def file_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The open segment mapped in memory (ext4, XFS, tmpfs), or written with pwrite()."""
    if request.param == "pwrite":
        monkeypatch.setattr(spool_module, "_allocates_on_write", lambda directory: False)
    return str(request.param)


def test_only_file_systems_that_allocate_on_write_are_mapped(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
        "23 22 0:30 / /data rw shared:2 - btrfs /dev/sdb rw\n"
        "24 23 0:31 / /data/my\\040spool rw shared:3 - xfs /dev/sdc rw\n"
        "25 22 0:32 / /srv/nfs rw shared:4 - nfs4 server:/x rw\n"
    )
    allocates = spool_module._allocates_on_write
    assert allocates(Path("/var/spool/events"), mountinfo)
    assert not allocates(Path("/data/events"), mountinfo)
    assert allocates(Path("/database"), mountinfo)  # "/data" is a prefix of it, not a parent
    assert allocates(Path("/data/my spool/events"), mountinfo)
    assert not allocates(Path("/srv/nfs/events"), mountinfo)
    assert not allocates(Path("/x"), tmp_path / "no-such-file")


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
            "request_id": "req-42",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
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
    fields = msgspec.msgpack.decode(encode_event(event)[8:])
    assert fields[0] == 2  # the version, first in the MessagePack array
    fields[0] = 3
    with pytest.raises(ValueError, match="unknown spool record version 3"):
        decode_event(msgspec.msgpack.encode(fields))


def test_bad_spool_settings_name_the_value_and_the_fix(
    host_models: HostModels, tmp_path: Path
) -> None:
    for bad in ("sometimes", 0, -1.0, math.nan, math.inf, True, 7200, 3600.001):
        with pytest.raises(ConfigurationError, match=r"Spool\(fsync=.*use 'never', 'always'"):
            Spool(tmp_path, fsync=bad)  # type: ignore[arg-type]
    for size in (0, 100, 4095, 2.5, None):
        with pytest.raises(ConfigurationError, match=r"Spool\(max_bytes=.*int >= 4096"):
            Spool(tmp_path, max_bytes=size)  # type: ignore[arg-type]
    for directory in ("", None, 3, f"{tmp_path}/a\x00b"):
        with pytest.raises(ConfigurationError, match=r"Spool\(directory="):
            Spool(directory)  # type: ignore[arg-type]
    # A path that cannot be a directory is refused when the writer opens it, naming it.
    (tmp_path / "a-file").write_text("")
    for unusable, reason in (
        (tmp_path / "a-file" / "spool", "Not a directory"),
        (tmp_path / "a-file", "File exists"),
    ):
        with pytest.raises(ConfigurationError) as caught:
            BufferedWriter(host_models.EventLog, DOWN, spool=Spool(unusable))
        assert str(caught.value).startswith(
            f"Spool(directory={str(unusable)!r}) cannot be used: {reason}; "
        )
        assert str(caught.value).endswith(
            "pass a directory this process may create and write, on a local file system"
        )
    with pytest.raises(ConfigurationError, match="spool='spool-dir' is not valid; pass a Spool"):
        BufferedWriter(host_models.EventLog, DOWN, spool="spool-dir")  # type: ignore[arg-type]
    assert Spool(tmp_path, fsync=0.05).fsync == 0.05
    assert Spool(str(tmp_path), fsync="always").fsync == "always"
    # The largest interval and the smallest size are accepted; the defaults are the documented
    # ones (no syncs, 1 GiB: docs/writing.md).
    assert Spool(tmp_path, fsync=3600, max_bytes=4096).max_bytes == 4096
    assert Spool(tmp_path) == Spool(tmp_path, fsync="never", max_bytes=1 << 30)


def test_fsync_policies(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    original = spool_module._fdatasync
    monkeypatch.setattr(spool_module, "_fdatasync", lambda fd: synced.append(fd) or original(fd))
    key = uuid.uuid4()

    def spool_some(policy: Any, count: int = 5) -> BufferedWriter[Any]:
        synced.clear()
        writer = BufferedWriter(
            host_models.EventLog, DOWN, spool=Spool(tmp_path / str(policy), fsync=policy)
        )
        for _ in range(count):
            writer.enqueue(session_id=key, user_id=key, event_type="x")
        return writer

    writer = spool_some("never")
    time.sleep(0.05)
    assert synced == []
    writer.close(timeout=0)
    writer = spool_some("always")
    assert len(synced) == 5  # each enqueue waited for its sync
    writer.close(timeout=0)
    writer = spool_some(0.01, count=0)
    time.sleep(0.1)
    assert synced == []  # the background thread syncs only what was written
    writer.close(timeout=0)
    writer = spool_some(0.02)
    deadline = time.monotonic() + 5
    while not synced and time.monotonic() < deadline:  # the background thread syncs
        time.sleep(0.01)
    time.sleep(0.3)  # enqueues that came after a sync are synced by a later tick
    done = len(synced)
    assert 1 <= done <= 5
    time.sleep(0.05)
    assert len(synced) == done  # nothing new written, nothing synced again
    writer.close(timeout=0)


def _directory_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record the directories that are fsynced and removed, in order (``("fsync", path)``)."""
    seen: list[tuple[str, str]] = []
    real_fsync, real_rmdir = os.fsync, os.rmdir

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rmdir(path: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(("rmdir", os.fspath(path)))
        real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rmdir", rmdir)
    return seen


@pytest.mark.parametrize("policy", ["always", 30])
def test_a_syncing_spool_syncs_its_directory_before_it_removes_an_adopted_one(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Any
) -> None:
    key = uuid.uuid4()
    spool_down(host_models, tmp_path, chat_events(key, key, 3))
    [mine] = tmp_path.iterdir()
    dead = mine.rename(tmp_path / "gone-1")  # as a killed process of another pid leaves it
    seen = _directory_syncs(monkeypatch)
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path, fsync=policy))
    # The renames into our spool are on disk before the dead spool's directory is removed,
    # and the new segment's name before the first record is written into it.
    assert seen == [("fsync", str(mine)), ("rmdir", str(dead)), ("fsync", str(mine))]
    seen.clear()
    writer.close(timeout=0)  # the 3 events stay: the directory entries are synced
    assert seen == [("fsync", str(mine))]
    monkeypatch.undo()
    seen = _directory_syncs(monkeypatch)
    mine.rename(dead)
    synced: list[int] = []
    monkeypatch.setattr(spool_module, "_fdatasync", synced.append)
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path, fsync="never"))
    writer.enqueue(session_id=key, user_id=key, event_type="x")
    writer.close(timeout=0)
    assert (seen, synced) == ([("rmdir", str(dead))], [])  # "never": no sync at all
    assert writer.counters.spilled == 4


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


def _pin_host(monkeypatch: pytest.MonkeyPatch, host: str = "web-1") -> str:
    """Name the host; return the name of this process's spool under the directory."""
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    return f"{host}-{os.getpid()}"


def test_each_process_has_its_own_spool_named_after_its_host_and_pid(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = uuid.uuid4()
    for host, name in [("web-1.example", "web-1.example"), ("a b/c:d", "a_b_c_d"), ("", "host")]:
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        directory = tmp_path / (name or "empty")
        spool_down(host_models, directory, chat_events(key, key, 1))
        assert files(directory) == [
            f"{name}-{os.getpid()}/000000000001.seg",
            f"{name}-{os.getpid()}/lock",
            f"{name}-{os.getpid()}/table",
        ]


def test_the_spool_is_private_to_its_user(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "umask", os.umask)  # restored after the test
    os.umask(0o022)
    name = _pin_host(monkeypatch)
    root = tmp_path / "not" / "there" / "yet"  # created, parents too
    key = uuid.uuid4()
    spool_down(host_models, root, chat_events(key, key, 1))
    modes = {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode)
        for path in [root, *root.rglob("*")]
    }
    assert modes == {
        ".": 0o700,
        name: 0o700,
        f"{name}/000000000001.seg": 0o600,
        f"{name}/lock": 0o600,
        f"{name}/table": 0o644,  # the table's name only, behind the directory's 0o700
    }


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _assert_nothing_left_open(fds: set[str], folder: Path) -> None:
    """No fd opened since ``fds`` was taken is still open, and none is under ``folder``.

    Other tests' leftovers may be collected meanwhile: fds may close, none may open.
    """
    assert _open_fds() - fds == set()
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since the listing
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    assert [target for target in targets if target.startswith(str(folder))] == []


def test_a_second_writer_waits_briefly_for_an_adopter_then_is_refused(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _pin_host(monkeypatch)
    (tmp_path / name).mkdir(parents=True)
    lock = os.open(tmp_path / name / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # a starting writer adopting this spool, for 0.1 s
    shipped = spool_module.LOCK_WAIT
    monkeypatch.setattr(spool_module, "LOCK_WAIT", 10)  # a loaded machine may run it late
    started = time.monotonic()
    threading.Timer(0.1, os.close, [lock]).start()
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert 0.09 <= time.monotonic() - started < 5  # it waited for the lock, not for its wait
    monkeypatch.setattr(spool_module, "LOCK_WAIT", shipped)
    fds = _open_fds()
    before = resource.getrusage(resource.RUSAGE_THREAD)
    started = time.monotonic()
    with pytest.raises(SpoolInUseError, match="give each writer its own Spool directory"):
        BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    waited = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_THREAD)
    assert 0.24 <= waited < 3.0  # refused after about a quarter of a second
    assert after.ru_nvcsw - before.ru_nvcsw >= 5  # it slept between tries, not spun
    assert _open_fds() - fds == set()  # the refused writer left none open (the first one's stay)
    writer.close(timeout=0)


def test_a_writer_leaves_no_file_open(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 4096)
    key = uuid.uuid4()
    _leave_spool(host_models, tmp_path, chat_events(key, key, 2), "gone-1")
    fds = _open_fds()
    for policy in ("always", 0.01, "never"):  # adopts gone-1, then its own spool
        writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path, fsync=policy))
        for event in chat_events(key, key, 100):  # across two segments, or more
            writer.enqueue(event)
        time.sleep(0.05)  # the sync thread syncs (a copy of) the open segment
        writer.close(timeout=0)
        _assert_nothing_left_open(fds, tmp_path)
    assert writer.counters.spilled == 302


def test_a_periodic_spool_syncs_a_segment_before_it_moves_to_the_next(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 4096)
    synced: list[str] = []
    original = spool_module._fdatasync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        original(fd)

    monkeypatch.setattr(spool_module, "_fdatasync", record)
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path, fsync=3600))
    key = uuid.uuid4()
    while len(segments(tmp_path)) < 3:
        writer.enqueue(session_id=key, user_id=key, event_type="x", payload={"t": "x" * 300})
    # The sync thread syncs only the open segment (not in an hour): each full one is synced
    # when the writer moves on from it.
    assert synced == [str(path) for path in segments(tmp_path)[:2]]
    writer.close(timeout=0)  # and the open one when the writer closes
    assert synced == [str(path) for path in segments(tmp_path)]


def test_a_spool_is_for_one_table(host_models: HostModels, tmp_path: Path) -> None:
    key = uuid.uuid4()
    spool_down(host_models, tmp_path, chat_events(key, key, 3))
    name = files(tmp_path)[0].split("/")[0]
    table = (tmp_path / name / "table").read_text()  # the spool records its table
    assert host_models.EventLog.__tablename__ in table
    (tmp_path / name / "table").write_text("other.event_logs")
    with pytest.raises(ConfigurationError, match="one Spool directory per destination"):
        BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    (tmp_path / name / "table").write_text(table)  # the refusal let go of the lock
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert writer.counters.spilled == 3
    writer.close(timeout=0)


def _another_writer_adopts(
    monkeypatch: pytest.MonkeyPatch, lock: Path, taken: Path, *, call: str
) -> None:
    """Let another process's starting writer adopt the spool of ``lock`` at the worst moment.

    Just before this process's writer opens (``call="open"``) or locks (``"flock"``) that
    lock file, the other writer moves the spool's segments to ``taken`` and removes its
    files and directory, as `Journal._adopt` does. Two processes cannot be made to meet at
    that instant otherwise, so the test wraps ``os.open`` / ``fcntl.flock``.
    """
    real = {"open": os.open, "flock": fcntl.flock}[call]
    done = False

    def adopt() -> None:
        taken.mkdir()
        for path in lock.parent.glob("*.seg"):
            path.rename(taken / path.name)
        for path in lock.parent.iterdir():
            path.unlink()
        lock.parent.rmdir()

    def wrapper(target: Any, *args: Any) -> Any:
        nonlocal done
        path = os.readlink(f"/proc/self/fd/{target}") if call == "flock" else os.fspath(target)
        if not done and path == str(lock):
            done = True
            adopt()
        return real(target, *args)

    monkeypatch.setattr(os if call == "open" else fcntl, call, wrapper)


@pytest.mark.parametrize("call", ["open", "flock"])
def test_a_writer_whose_spool_is_adopted_while_it_starts_makes_a_new_one(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    name = _pin_host(monkeypatch)
    key = uuid.uuid4()
    # An earlier writer of a process with our pid left 3 events; another process adopts
    # them while we start.
    _leave_spool(host_models, tmp_path, chat_events(key, key, 3), name)
    fds = _open_fds()
    _another_writer_adopts(monkeypatch, tmp_path / name / "lock", tmp_path / "taken", call=call)
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    monkeypatch.undo()
    assert writer.counters.spilled == 0  # the other writer replays them
    assert len(list((tmp_path / "taken").glob("*.seg"))) == 1
    writer.enqueue(session_id=key, user_id=key, event_type="x")
    writer.close(timeout=0)
    assert writer.counters.spilled == 1
    assert files(tmp_path) == sorted(
        [
            f"{name}/000000000001.seg",
            f"{name}/lock",
            f"{name}/table",
            "taken/000000000001.seg",
        ]
    )
    _assert_nothing_left_open(fds, tmp_path)


def test_a_dead_spool_adopted_by_another_writer_meanwhile_is_skipped(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _pin_host(monkeypatch)
    key = uuid.uuid4()
    dead = _leave_spool(host_models, tmp_path, chat_events(key, key, 3), "gone-1")
    fds = _open_fds()
    # It takes the dead spool between our open and our flock of its lock.
    _another_writer_adopts(monkeypatch, dead / "lock", tmp_path / "taken", call="flock")
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    monkeypatch.undo()
    assert writer.counters.spilled == 0
    writer.close(timeout=0)
    assert files(tmp_path) == ["taken/000000000001.seg"]
    _assert_nothing_left_open(fds, tmp_path)
    assert name not in os.listdir(tmp_path)


def _leave_spool(
    host_models: HostModels, root: Path, events: list[NewEvent], name: str, **options: Any
) -> Path:
    """The spool a killed process of another pid leaves: ours, spooled down, renamed."""
    scratch = root.parent / f"{root.name}-scratch-{name}"  # not adopting what root holds
    spool_down(host_models, scratch, events, **options)
    [mine] = scratch.iterdir()
    root.mkdir(exist_ok=True)
    moved = mine.rename(root / name)
    scratch.rmdir()
    return moved


def _journal(directory: Path) -> bytes:
    """The records of a spool's segments, in the order of their numbers."""
    return b"".join(path.read_bytes() for path in sorted(directory.glob("*.seg")))


def test_adopted_spools_are_replayed_after_our_own_in_order(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 4096)
    name = _pin_host(monkeypatch)
    key = uuid.uuid4()
    first, second, ours = (chat_events(key, key, count) for count in (90, 100, 60))
    _leave_spool(host_models, tmp_path, first, "gone-1")
    _leave_spool(host_models, tmp_path, second, "gone-2")
    _leave_spool(host_models, tmp_path, ours, name)  # an earlier writer of this process
    layout = [path.name for path in sorted((tmp_path / name).glob("*.seg"))]
    assert len(layout) >= 2
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert writer.counters.spilled == 250
    numbers = [int(path.stem) for path in sorted((tmp_path / name).glob("*.seg"))]
    assert numbers == list(range(1, len(numbers) + 1))  # none overwritten, none skipped
    everything = ours + first + second
    assert _journal(tmp_path / name) == b"".join(map(encode_event, everything))
    writer.close(timeout=0)
    assert [path.name for path in tmp_path.iterdir()] == [name]
    # Adopted into an empty spool, the segments are numbered from 1 as ours are.
    shutil.rmtree(tmp_path)
    _leave_spool(host_models, tmp_path, first, "gone-1")
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert files(tmp_path)[0] == f"{name}/000000000001.seg"
    assert _journal(tmp_path / name) == b"".join(map(encode_event, first))
    writer.close(timeout=0)


def test_what_a_starting_writer_leaves_alone_in_the_directory(
    host_models: HostModels,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = _pin_host(monkeypatch)
    key = uuid.uuid4()
    other = _leave_spool(host_models, tmp_path, chat_events(key, key, 3), "other-1")
    (other / "table").write_text("other.event_logs")  # a writer of another table left it
    kept = files(other)
    untabled = chat_events(key, key, 4)
    orphan = _leave_spool(host_models, tmp_path, untabled, "killed-early-1")
    (orphan / "table").unlink()  # killed before it wrote the name of its table
    (tmp_path / "notes.txt").write_text("a stray file")
    (tmp_path / "starting-2").mkdir()  # a process creating its spool: no lock file yet
    with caplog.at_level(logging.WARNING, logger="eventlog_persist"):
        writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert writer.counters.spilled == 4  # the orphan's events only
    assert _journal(tmp_path / name) == b"".join(map(encode_event, untabled))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [name, "notes.txt", "other-1", "starting-2"]
    )
    assert files(other) == kept
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        f"not replaying the spool {other}: it holds events for the table other.event_logs"
        in message
        for message in messages
    ), messages
    writer.close(timeout=0)


def test_a_spool_that_cannot_be_read_fails_the_writer_and_frees_the_lock(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _pin_host(monkeypatch)
    key = uuid.uuid4()
    events = chat_events(key, key, 3)
    dead = _leave_spool(host_models, tmp_path, events, "gone-1")
    # Not a file we can read (an I/O error, or permissions; the tests may run as root).
    (dead / "000000000002.seg").mkdir()
    with pytest.raises(IsADirectoryError):
        BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    (tmp_path / name / "000000000002.seg").rmdir()  # adopted, then found unreadable
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert writer.counters.spilled == 3
    writer.close(timeout=0)


def test_a_segment_with_no_whole_record_is_deleted_when_adopted(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _pin_host(monkeypatch)
    key = uuid.uuid4()
    events = chat_events(key, key, 3)
    dead = _leave_spool(host_models, tmp_path, events, "gone-1")
    (dead / "000000000002.seg").write_bytes(b"")  # killed right after starting a segment
    (dead / "000000000003.seg").write_bytes(encode_event(events[0])[:20])  # a torn one
    (dead / "000000000004.seg").write_bytes(encode_event(events[1]))
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert (writer.counters.spilled, writer.counters.spool_damaged) == (4, 1)
    assert [path.name for path in sorted((tmp_path / name).glob("*.seg"))] == [
        "000000000001.seg",
        "000000000004.seg",
        "000000000005.seg",  # ours, after the last adopted one
    ]
    writer.close(timeout=0)


@pytest.mark.fault
@pytest.mark.parametrize("junk", [b"", b"\x01"])
def test_the_room_a_killed_writer_reserved_is_not_damage_but_bytes_in_it_are(
    host_models: HostModels,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    junk: bytes,
) -> None:
    _pin_host(monkeypatch)
    key = uuid.uuid4()
    events = chat_events(key, key, 3)
    dead = _leave_spool(host_models, tmp_path, events, "gone-1")
    [segment] = sorted(dead.glob("*.seg"))
    records = segment.read_bytes()
    assert records == b"".join(map(encode_event, events))  # closing cut the reserved zeros
    # Killed while its segment was open: the records, then the zeros reserved after them
    # (with ``junk``: then the first bytes of a record copied in when the kill came).
    segment.write_bytes(records + bytes(100) + junk + bytes(4000))
    with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
        writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert (writer.counters.spilled, writer.counters.spool_damaged) == (3, len(junk))
    messages = [record.getMessage() for record in caplog.records if "record" in record.msg]
    torn = f"a torn record (cut short by a crash) at byte {len(records)}, 4101 bytes skipped"
    assert [torn in message for message in messages] == ([True] if junk else [])
    writer.close(timeout=0)


@pytest.mark.fault
@pytest.mark.parametrize("room", [1, 7, 8])
def test_a_few_reserved_zeros_after_the_last_record_are_not_damage_either(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    """Fewer zeros than a record's header (the record ended just before the reservation's
    end) are the same room, not a torn record."""
    _pin_host(monkeypatch)
    key = uuid.uuid4()
    events = chat_events(key, key, 3)
    dead = _leave_spool(host_models, tmp_path, events, "gone-1")
    [segment] = sorted(dead.glob("*.seg"))
    segment.write_bytes(segment.read_bytes() + bytes(room))
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert (writer.counters.spilled, writer.counters.spool_damaged) == (3, 0)
    writer.close(timeout=0)


@pytest.mark.fault
def test_the_size_cap_counts_the_adopted_records(host_models: HostModels, tmp_path: Path) -> None:
    key = uuid.uuid4()
    events = [
        new_event(session_id=key, user_id=key, event_type="x", payload={"t": "x" * 300})
        for _ in range(30)
    ]
    size = len(encode_event(events[0]))
    assert all(len(encode_event(event)) == size for event in events)
    _leave_spool(host_models, tmp_path, events[:10], "gone-1")
    dead = DeadLetters()
    writer = BufferedWriter(
        host_models.EventLog,
        DOWN,
        spool=Spool(tmp_path, max_bytes=max(4096, 15 * size)),
        on_dead_letter=dead,
    )
    assert 15 * size >= 4096  # room for exactly 15 records
    for event in events[10:]:
        writer.enqueue(event)
    assert writer.counters.spilled + writer.counters.queued == 15
    assert [event for event, _ in dead.items] == events[15:]
    writer.close(timeout=0)


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


def test_folders_that_are_not_a_spool_or_cannot_be_opened_are_left_alone(
    host_models: HostModels, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``lost+found`` at a volume's root, or a spool of a writer of another user, does not stop
    a writer from starting."""
    key = uuid.uuid4()
    spool_down(host_models, tmp_path, chat_events(key, key, 3))
    [dead] = list(tmp_path.iterdir())
    not_a_spool = tmp_path / "lost+found"
    shutil.copytree(dead, not_a_spool)  # even one that looks like a spool inside
    shutil.rmtree(dead)
    unreadable = tmp_path / "otherhost-4242"
    unreadable.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:  # opening its lock fails (ENXIO), as EACCES would
        sock.bind(str(unreadable / "lock"))
        with caplog.at_level(logging.WARNING, logger="eventlog_persist"):
            writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
        assert writer.counters.spilled == 0
        writer.close(timeout=0)
    assert sorted(path.name for path in not_a_spool.iterdir()) == sorted(
        ["lock", "table", "000000000001.seg"]
    )
    [warning] = [r.getMessage() for r in caplog.records if "not replaying" in r.getMessage()]
    assert f"not replaying the spool {unreadable}: its lock cannot be opened (" in warning
    assert "the writers that share a Spool directory must run as one user" in warning


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
    # The kill may cut the record being appended (copied into the mapped file, or written
    # with pwrite(), which the kernel stops at a page boundary for SIGKILL): a torn tail,
    # whose enqueue never returned.
    assert final.spool_damaged <= 1, why
    assert files(directory) == []


# -- torn records, the size cap, spilling and reading back ------------------------------------


def spooled_down(
    engine: Engine, models: HostModels, directory: Path, count: int
) -> tuple[list[NewEvent], Path, list[bytes]]:
    """``count`` events of a seeded session left on the spool (one segment), and their records."""
    user_id, session_id = seed(engine, models)
    events = chat_events(user_id, session_id, count)
    spool_down(models, directory, events)
    [segment] = segments(directory)
    return events, segment, [encode_event(event) for event in events]


@pytest.mark.fault
def test_a_torn_tail_and_a_damaged_record_are_skipped_and_reported(
    file_mode: str,
    host_engine: Engine,
    host_models: HostModels,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events, segment, records = spooled_down(host_engine, host_models, tmp_path, 20)
    data = bytearray(segment.read_bytes())
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
    damaged_at, torn_at = sum(map(len, records[:10])), sum(map(len, records[:19]))
    damaged = (
        f"the bytes up to the next whole record) at byte {damaged_at}, "
        f"{len(records[10])} bytes skipped"
    )
    torn = f"a torn record (cut short by a crash) at byte {torn_at}, {len(records[19]) - 5} bytes"
    assert any(damaged in message for message in messages), messages
    assert any(torn in message for message in messages), messages
    assert files(tmp_path) == []


@pytest.mark.fault
@pytest.mark.parametrize("damage", ["length", "zeroed page", "length fits"])
def test_damage_to_a_records_length_loses_only_the_records_it_covers(
    damage: str,
    host_engine: Engine,
    host_models: HostModels,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A length the disk changed no longer ends the parse: it goes on at the next whole record."""
    events, segment, records = spooled_down(host_engine, host_models, tmp_path, 40)
    data = bytearray(segment.read_bytes())
    third = sum(map(len, records[:2]))
    if damage == "length":
        data[third + 2] ^= 0x01  # a bit of the 3rd record's length: past the file's end
        lost = {2}
    elif damage == "length fits":
        data[third] ^= 0x04  # 4 bytes off: it ends inside the 4th record, which is whole
        lost = {2}
    else:  # a block of zeros from inside the 3rd record into the 5th
        data[third + 10 : third + 10 + len(records[2]) + len(records[3])] = bytes(
            len(records[2]) + len(records[3])
        )
        lost = {2, 3, 4}
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
        writer = BufferedWriter(
            host_models.EventLog, host_engine.url, spool=Spool(tmp_path)
        ).start()
        assert writer.flush(timeout=20)
    final = writer.close()
    kept = [event for i, event in enumerate(events) if i not in lost]
    assert (final.replayed, final.written, final.spool_damaged) == (len(kept), len(kept), 1)
    assert sorted(stored(host_engine)) == sorted(event.id for event in kept)
    [message] = [record.getMessage() for record in caplog.records if "skipped" in record.msg]
    skipped = sum(len(records[i]) for i in lost)
    assert (
        "a damaged record (or several: the bytes up to the next whole record) at byte "
        f"{third}, {skipped} bytes skipped"
    ) in message
    assert files(tmp_path) == []


@pytest.mark.fault
@pytest.mark.parametrize("cut", [1, 5, 7, 8])
def test_a_record_torn_inside_its_header_is_skipped_and_reported(
    host_models: HostModels, tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: int
) -> None:
    key = uuid.uuid4()
    events = chat_events(key, key, 6)
    spool_down(host_models, tmp_path, events[:5])
    [segment] = segments(tmp_path)
    whole = segment.stat().st_size
    with segment.open("ab") as file:  # the power went off after ``cut`` bytes of the 6th
        file.write(encode_event(events[5])[:cut])
    with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
        writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    assert (writer.counters.spilled, writer.counters.spool_damaged) == (5, 1)
    [message] = [record.getMessage() for record in caplog.records if "record" in record.msg]
    assert f"a torn record (cut short by a crash) at byte {whole}, {cut} bytes skipped" in message
    writer.enqueue(events[5])  # into a new segment, not after the torn bytes
    writer.close(timeout=0)
    assert segments(tmp_path)[-1].read_bytes() == encode_event(events[5])


@pytest.mark.fault
def test_records_damaged_in_the_open_spool_are_skipped_and_reported(
    host_engine: Engine,
    host_models: HostModels,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = chat_events(user_id, session_id, 8)
    records = [encode_event(event) for event in events]
    writer = BufferedWriter(
        host_models.EventLog, host_engine.url, spool=Spool(tmp_path), max_queued=2
    )
    for event in events:  # 2 in the queue, 6 on the spool only
        writer.enqueue(event)
    assert writer.counters.spilled == 6
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    sixth, eighth = sum(map(len, records[:5])), sum(map(len, records[:7]))
    data[sixth + 20] ^= 0xFF  # the disk damaged the 6th record, and lost the 8th's end
    segment.write_bytes(bytes(data[: eighth + 10]))
    with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
        writer.start()
        assert writer.flush(timeout=20)
    final = writer.close()
    assert (final.written, final.spool_damaged, final.replayed, final.spilled) == (6, 2, 0, 0)
    assert sorted(stored(host_engine)) == sorted(event.id for event in events[:5] + events[6:7])
    messages = [record.getMessage() for record in caplog.records if "record" in record.msg]
    assert len(messages) == 2, messages
    assert (
        f"the bytes up to the next whole record) at byte {sixth}, {len(records[5])} bytes skipped"
        in messages[0]
    )
    assert (
        f"a torn record (cut short by a crash) at byte {eighth}, {len(records[7])} bytes"
        in messages[1]
    )
    assert files(tmp_path) == []


@pytest.mark.fault
def test_a_damaged_record_counts_toward_what_one_read_back_may_take(
    host_engine: Engine,
    host_models: HostModels,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = chat_events(user_id, session_id, 6)
    records = [encode_event(event) for event in events]
    asked: list[tuple[int, int]] = []  # (most records asked for, records read) per read back
    real_read = spool_module.Journal.read

    def read(journal: Any, max_events: int, max_bytes: int, empty: bool) -> Any:
        reading = real_read(journal, max_events, max_bytes, empty)
        asked.append((max_events, reading.consumed))
        return reading

    monkeypatch.setattr(spool_module.Journal, "read", read)
    writer = BufferedWriter(
        host_models.EventLog, host_engine.url, spool=Spool(tmp_path), max_queued=2
    )
    for event in events:  # 2 in the queue, 4 on the spool only
        writer.enqueue(event)
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    fourth = sum(map(len, records[:3]))
    data[fourth + 20] ^= 0xFF  # the second record of a read back of 2 is damaged
    segment.write_bytes(bytes(data))
    writer.start()
    assert writer.flush(timeout=20)
    final = writer.close()
    assert (final.written, final.spool_damaged) == (5, 1)
    assert asked[0] == (2, 2), asked
    assert all(read <= most for most, read in asked), asked


@pytest.mark.fault
def test_a_spool_file_removed_under_the_writer_loses_only_its_spilled_events(
    host_engine: Engine,
    host_models: HostModels,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = chat_events(user_id, session_id, 5)
    writer = BufferedWriter(
        host_models.EventLog, host_engine.url, spool=Spool(tmp_path), max_queued=2
    )
    for event in events:  # 2 in the queue, 3 on the spool only
        writer.enqueue(event)
    [segment] = segments(tmp_path)
    segment.unlink()  # a clean-up job removed it
    with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
        writer.start()
        assert writer.flush(timeout=20)
    final = writer.close()
    assert (final.written, final.spool_damaged, final.spilled, final.errors) == (2, 1, 0, 0)
    assert sorted(stored(host_engine)) == sorted(event.id for event in events[:2])
    assert any("could not read the spool segment" in r.getMessage() for r in caplog.records)


@pytest.mark.fault
def test_flush_returns_when_the_last_spooled_record_is_found_damaged(
    host_models: HostModels, tmp_path: Path
) -> None:
    key = uuid.uuid4()
    events = [new_event(session_id=key, user_id=key, event_type="x") for _ in range(3)]
    flushing = threading.Event()
    dead = DeadLetters()

    def hook(event: NewEvent, error: BaseException) -> None:
        dead(event, error)
        assert flushing.wait(10)  # the first batch is given up once flush waits
        time.sleep(0.1)

    writer = _giving_up(host_models, tmp_path, hook, max_queued=2)
    for event in events:  # the third on the spool only
        writer.enqueue(event)
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[len(written(segment)) - 3] ^= 0xFF  # the disk damaged it
    segment.write_bytes(bytes(data))
    writer.start()
    started = time.monotonic()
    flushing.set()
    assert writer.flush(timeout=10)  # given up or lost: all three
    assert time.monotonic() - started < 5  # told when the damaged record was given up
    final = writer.close()
    assert (final.dead_lettered, final.spool_damaged, final.spilled) == (2, 1, 0)


@pytest.mark.fault
@pytest.mark.asyncio
async def test_async_flush_returns_when_the_last_spooled_record_is_found_damaged(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = chat_events(user_id, session_id, 3)
    writer = AsyncBufferedWriter(
        host_models.EventLog, host_engine.url, spool=Spool(tmp_path), max_queued=2
    )
    for event in events:  # the third on the spool only
        await writer.enqueue(event)
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[len(written(segment)) - 3] ^= 0xFF  # the disk damaged it
    segment.write_bytes(bytes(data))
    await writer.start()
    started = time.monotonic()
    assert await writer.flush(timeout=10)  # written or given up: all three
    assert time.monotonic() - started < 5  # the loop was not held up
    final = await writer.close()
    assert (final.written, final.spool_damaged, final.spilled) == (2, 1, 0)


@pytest.mark.fault
def test_the_size_cap_drops_and_reports(
    file_mode: str, host_models: HostModels, tmp_path: Path
) -> None:
    dead = DeadLetters()
    events = _events_of(1000, 40)
    cap = 16 * 1000  # room for exactly 16 records
    writer = BufferedWriter(
        host_models.EventLog,
        DOWN,
        spool=Spool(tmp_path, max_bytes=cap),
        max_queued=4,
        retry=FAST_RETRY,
        on_dead_letter=dead,
    ).start()
    for event in events:
        writer.enqueue(event)
    counters = writer.counters
    on_disk = sum(path.stat().st_size for path in segments(tmp_path))
    assert on_disk == cap
    assert counters.queued == 4
    assert counters.queued + counters.spilled == 16
    assert counters.dropped == len(dead.items) == 40 - 16
    assert [event for event, _ in dead.items] == events[16:]
    assert all(isinstance(error, QueueFullError) for _, error in dead.items)
    assert "the spool is full (16000 bytes)" in str(dead.items[0][1])
    final = writer.close(timeout=0.05)
    assert final.spilled == 40 - final.dropped  # left on the spool, not reported
    assert len(dead.items) == final.dropped


@pytest.mark.fault
@pytest.mark.timeout(60)
def test_spilled_events_are_read_back_through_a_small_queue_and_segments_trimmed(
    file_mode: str,
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


def _events_of(size: int, count: int) -> list[NewEvent]:
    """``count`` events whose records are ``size`` bytes each."""
    key = uuid.uuid4()

    def make(length: int) -> NewEvent:
        return new_event(session_id=key, user_id=key, event_type="x", payload={"t": "x" * length})

    start = max(0, size - len(encode_event(make(0))) - 8)  # a record grows with its payload
    length = next(n for n in range(start, size) if len(encode_event(make(n))) == size)
    return [make(length) for _ in range(count)]


@pytest.mark.fault
def test_the_journal_is_split_into_files_of_one_mib(
    file_mode: str, host_models: HostModels, tmp_path: Path
) -> None:
    events = _events_of(4096, 300)  # 256 fill a file exactly
    spool_down(host_models, tmp_path, events)
    assert [path.stat().st_size for path in segments(tmp_path)] == [1 << 20, 44 * 4096]


@pytest.mark.fault
def test_a_drained_file_of_64_kib_is_replaced_and_deleted(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = _events_of(1024, 64)
    events = [
        msgspec.structs.replace(event, session_id=session_id, user_id=user_id) for event in events
    ]
    size = len(encode_event(events[0]))
    with BufferedWriter(host_models.EventLog, host_engine.url, spool=Spool(tmp_path)) as writer:
        for event in events[:-1]:
            writer.enqueue(event)
        assert writer.flush(timeout=20)
        [segment] = segments(tmp_path)
        assert len(written(segment)) == 63 * size  # everything written, less than 64 KiB
        writer.enqueue(events[-1])
        assert writer.flush(timeout=20)
        assert [path.stat().st_size for path in segments(tmp_path)] == [0]  # 64 KiB: a new one
        assert segments(tmp_path)[0].name != segment.name
    assert len(stored(host_engine)) == 64


def test_a_file_whose_records_were_all_written_is_deleted_when_the_next_is_started(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 4096)
    dead = DeadLetters()
    events = _events_of(1024, 5)
    writer = BufferedWriter(
        host_models.EventLog,
        DOWN,
        spool=Spool(tmp_path),
        retry=RetryPolicy(max_attempts=1),
        flush_interval=30,
        on_dead_letter=dead,
    ).start()
    for event in events[:4]:  # fill the first file
        writer.enqueue(event)
    assert writer.flush(timeout=10)  # given up on: acknowledged
    assert len(dead.items) == 4
    [first] = segments(tmp_path)
    writer.enqueue(events[4])  # starts a second file; the first holds nothing to keep
    assert [written(path) for path in segments(tmp_path)] == [encode_event(events[4])]
    assert first not in segments(tmp_path)
    writer.close(timeout=0)


def test_a_file_is_deleted_as_soon_as_its_records_are_done_and_not_before(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 4096)
    acked, go = threading.Event(), threading.Event()
    dead = DeadLetters()

    def hook(event: NewEvent, error: BaseException) -> None:
        dead(event, error)
        acked.set()
        assert go.wait(10)  # holds the writer's thread after its first batch

    writer = BufferedWriter(
        host_models.EventLog,
        DOWN,
        spool=Spool(tmp_path, max_bytes=9 * 1024),  # room for the 9 records
        retry=RetryPolicy(max_attempts=1),  # each batch given up on at once: acknowledged
        batch_size=4,
        flush_interval=30,
        on_dead_letter=hook,
    )
    events = _events_of(1024, 13)
    for event in events[:9]:  # files of 4, 4 and 1 records, all in the queue
        writer.enqueue(event)
    _, second, third = segments(tmp_path)
    writer.start()
    assert acked.wait(10)  # the first batch, the first file's records, is done
    assert segments(tmp_path) == [second, third]
    go.set()
    assert writer.flush(timeout=10)
    assert [event for event, _ in dead.items] == events[:9]
    assert segments(tmp_path) == [third]  # the open one is kept
    for event in events[9:]:  # the deleted files' room is free again
        writer.enqueue(event)
    assert writer.flush(timeout=10)
    assert [event for event, _ in dead.items] == events
    assert writer.counters.dropped == 0
    writer.close(timeout=0)


@pytest.mark.parametrize(
    ("spilled", "damaged", "seen"),
    [
        # Equal sizes: each read back fills the queue's bytes exactly.
        ([1000] * 5, None, [(2, 1), (4, 1), (6, 1), (8, 0)]),
        # A larger event stops a read at the queue's bytes; a smaller one after it waits.
        ([1500, 1500, 0, 1500, 0], None, [(2, 1), (4, 0), (6, 0), (8, 0)]),
        # A damaged record counts as one of the records a read may take.
        ([1000] * 5, 3, [(2, 1), (4, 0), (6, 0), (7, 0)]),
        # Larger than the room the queue has left: read back once the queue ahead is written,
        # and alone: with it, the next one would not fit the queue's bytes.
        ([3000, 1000], None, [(2, 1), (3, 0), (4, 0), (5, 0)]),
    ],
)
def test_spilled_events_are_read_back_within_the_queues_bytes(
    host_models: HostModels,
    tmp_path: Path,
    spilled: list[int],
    damaged: int | None,
    seen: list[tuple[int, int]],
) -> None:
    key = uuid.uuid4()
    events = [
        new_event(session_id=key, user_id=key, event_type="x", payload={"t": "x" * length})
        for length in [1000] * 3 + spilled
    ]
    calls: list[tuple[int, int]] = []

    def hook(event: NewEvent, error: BaseException) -> None:
        counters = writer.counters  # on the writer's thread, between two batches
        calls.append((counters.dead_lettered, counters.queued))

    writer = BufferedWriter(
        host_models.EventLog,
        DOWN,
        spool=Spool(tmp_path),
        retry=RetryPolicy(max_attempts=1),  # each batch given up on at once
        batch_size=2,
        max_queued_bytes=3 * events[0].size_bytes,  # the first three; the rest spill
        on_dead_letter=hook,
    )
    for event in events:
        writer.enqueue(event)
    assert (writer.counters.queued, writer.counters.spilled) == (3, len(spilled))
    if damaged is not None:  # the disk damaged one of the spilled records
        [segment] = segments(tmp_path)
        data = bytearray(segment.read_bytes())
        data[sum(len(encode_event(event)) for event in events[:damaged]) + 20] ^= 0xFF
        segment.write_bytes(bytes(data))
    writer.start()
    assert writer.flush(timeout=10)
    writer.close(timeout=0)
    # After each batch: the events given up on so far, and those left in the queue.
    assert sorted(set(calls)) == seen


def test_spilled_events_read_back_into_an_empty_queue_keep_to_its_bytes(
    host_models: HostModels, tmp_path: Path
) -> None:
    key = uuid.uuid4()
    events = [
        new_event(session_id=key, user_id=key, event_type="x", payload={"t": "x" * length})
        for length in [1000] * 12 + [20_000]
    ]
    bound = 3 * events[0].size_bytes  # the last event alone is larger
    seen: list[int] = []

    def hook(event: NewEvent, error: BaseException) -> None:
        seen.append(writer.counters.dead_lettered)  # on the writer's thread, batch counted

    # Three events fit the queue's bytes; the rest spill.
    writer = _giving_up(host_models, tmp_path, hook, batch_size=100, max_queued_bytes=bound)
    for event in events:
        writer.enqueue(event)
    assert (writer.counters.queued, writer.counters.spilled) == (3, 10)
    writer.start()
    assert writer.flush(timeout=10)
    writer.close(timeout=0)
    # Batches of three (each read back stops at the queue's bytes), then the large event
    # alone: an empty queue takes one event however large.
    assert seen == [3] * 3 + [6] * 3 + [9] * 3 + [12] * 3 + [13]


@pytest.mark.asyncio
async def test_the_async_writer_reads_back_within_the_queues_bytes(
    host_models: HostModels, tmp_path: Path
) -> None:
    key = uuid.uuid4()
    events = [
        new_event(session_id=key, user_id=key, event_type="x", payload={"t": "x" * length})
        for length in [1000] * 12 + [20_000]
    ]
    seen: list[int] = []

    def hook(event: NewEvent, error: BaseException) -> None:
        seen.append(writer.counters.dead_lettered)  # on the loop, batch counted

    writer = AsyncBufferedWriter(
        host_models.EventLog,
        DOWN,
        spool=Spool(tmp_path),
        retry=RetryPolicy(max_attempts=1),
        on_dead_letter=hook,
        batch_size=100,
        max_queued_bytes=3 * events[0].size_bytes,
    )
    for event in events:
        await writer.enqueue(event)
    assert (writer.counters.queued, writer.counters.spilled) == (3, 10)
    await writer.start()
    assert await writer.flush(timeout=10)
    await writer.close(timeout=0)
    assert seen == [3] * 3 + [6] * 3 + [9] * 3 + [12] * 3 + [13]


def _eight_events() -> list[NewEvent]:
    """8 events: a writer with ``max_queued=3`` queues 3 and spools the other 5."""
    key = uuid.uuid4()
    return [new_event(session_id=key, user_id=key, event_type="x") for _ in range(8)]


def _damage_the_fourth_record(directory: Path, events: list[NewEvent]) -> None:
    """The disk damaged the record of the 4th of ``events`` in the spool's one file."""
    [segment] = segments(directory)
    data = bytearray(segment.read_bytes())
    data[sum(len(encode_event(event)) for event in events[:3]) + 20] ^= 0xFF
    segment.write_bytes(bytes(data))


class _CountersAtEachDeadLetter:
    """A dead-letter hook noting its writer's (dead_lettered, queued) at each call: on the
    writer's thread or loop, once the batch is released."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.seen: list[tuple[int, int]] = []

    def __call__(self, event: NewEvent, error: BaseException) -> None:
        counters = self.writer.counters
        self.seen.append((counters.dead_lettered, counters.queued))


# The first read-back finds 2 events in 3 records, so the next one takes a single event, not
# a batch, and the batch waits for it: batches of 3, 3 and 1, and the queue never holds more
# than max_queued (it is empty whenever a batch has been given up).
AFTER_THE_FOURTH_RECORD_DAMAGED = [(3, 0)] * 3 + [(6, 0)] * 3 + [(7, 0)]


@pytest.mark.fault
def test_a_read_back_after_a_damaged_record_keeps_to_the_queues_count(
    host_models: HostModels, tmp_path: Path
) -> None:
    events = _eight_events()
    hook = _CountersAtEachDeadLetter()
    hook.writer = writer = _giving_up(host_models, tmp_path, hook, batch_size=3, max_queued=3)
    for event in events:  # 3 in the queue, 5 on the spool only
        writer.enqueue(event)
    _damage_the_fourth_record(tmp_path, events)
    writer.start()
    assert writer.flush(timeout=10)
    final = writer.close(timeout=0)
    assert (final.dead_lettered, final.spool_damaged, final.spilled) == (7, 1, 0)
    assert hook.seen == AFTER_THE_FOURTH_RECORD_DAMAGED


@pytest.mark.fault
@pytest.mark.asyncio
async def test_an_async_read_back_after_a_damaged_record_keeps_to_the_queues_count(
    host_models: HostModels, tmp_path: Path
) -> None:
    events = _eight_events()
    hook = _CountersAtEachDeadLetter()
    hook.writer = writer = AsyncBufferedWriter(
        host_models.EventLog,
        DOWN,
        spool=Spool(tmp_path),
        retry=RetryPolicy(max_attempts=1),
        on_dead_letter=hook,
        batch_size=3,
        max_queued=3,
    )
    for event in events:
        await writer.enqueue(event)
    _damage_the_fourth_record(tmp_path, events)
    await writer.start()
    assert await writer.flush(timeout=10)
    final = await writer.close(timeout=0)
    assert (final.dead_lettered, final.spool_damaged, final.spilled) == (7, 1, 0)
    assert hook.seen == AFTER_THE_FOURTH_RECORD_DAMAGED


DAMAGED_FILE_END = {"batch_size": 2, "max_queued": 2, "flush_interval": 60}


def _events_over_two_files(engine: Engine, models: HostModels) -> list[NewEvent]:
    """5 events: with `DAMAGED_FILE_END`, 2 are queued, 2 spilled at the 1st file's end
    and 1 in the 2nd file."""
    user_id, session_id = seed(engine, models)
    return [
        msgspec.structs.replace(event, session_id=session_id, user_id=user_id)
        for event in _events_of(1 << 18, 5)  # 4 fill a file
    ]


def _damage_the_first_files_end(directory: Path) -> None:
    """The disk damaged the 3rd and 4th records: a read-back of those two finds no event."""
    first, _ = segments(directory)
    data = bytearray(first.read_bytes())
    data[(2 << 18) + 20] ^= 0xFF
    data[(3 << 18) + 20] ^= 0xFF
    first.write_bytes(bytes(data))


@pytest.mark.fault
def test_close_reads_back_past_records_found_damaged(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    events = _events_over_two_files(host_engine, host_models)
    writer = BufferedWriter(
        host_models.EventLog, host_engine.url, spool=Spool(tmp_path), **DAMAGED_FILE_END
    )
    for event in events:
        writer.enqueue(event)
    _damage_the_first_files_end(tmp_path)
    writer.start()
    final = writer.close()  # no flush: close reads the 2nd file back and writes it
    assert (final.written, final.spool_damaged, final.spilled) == (3, 2, 0)
    assert sorted(stored(host_engine)) == sorted(event.id for event in events[:2] + events[4:])


@pytest.mark.fault
@pytest.mark.asyncio
async def test_async_close_reads_back_past_records_found_damaged(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    events = _events_over_two_files(host_engine, host_models)
    writer = AsyncBufferedWriter(
        host_models.EventLog, host_engine.url, spool=Spool(tmp_path), **DAMAGED_FILE_END
    )
    for event in events:
        await writer.enqueue(event)
    _damage_the_first_files_end(tmp_path)
    await writer.start()
    final = await writer.close()
    assert (final.written, final.spool_damaged, final.spilled) == (3, 2, 0)
    assert sorted(stored(host_engine)) == sorted(event.id for event in events[:2] + events[4:])


def test_events_read_back_into_an_empty_queue_are_due_at_once(
    host_models: HostModels, tmp_path: Path
) -> None:
    key = uuid.uuid4()
    events = [new_event(session_id=key, user_id=key, event_type="x") for _ in range(8)]
    dead = DeadLetters()
    writer = _giving_up(host_models, tmp_path, dead, batch_size=3, max_queued=3, flush_interval=60)
    for event in events:
        writer.enqueue(event)
    assert (writer.counters.queued, writer.counters.spilled) == (3, 5)
    writer.start()
    # Two full batches, then the last two read back: they have waited on the spool already,
    # and go without a flush and without another flush_interval.
    wait_for(lambda: len(dead.items) == 8, 20, "the spilled events, without a flush")
    writer.close(timeout=0)
    assert [event for event, _ in dead.items] == events


def test_an_empty_queue_takes_one_event_larger_than_its_bytes(
    host_models: HostModels, tmp_path: Path
) -> None:
    key = uuid.uuid4()
    large, small = (
        new_event(session_id=key, user_id=key, event_type="x", payload={"t": "x" * length})
        for length in (3000, 10)
    )
    dead = DeadLetters()
    writer = _giving_up(host_models, tmp_path, dead, max_queued_bytes=1000)
    writer.enqueue(large)  # queued, not spilled, as without a spool
    assert (writer.counters.queued, writer.counters.spilled) == (1, 0)
    writer.enqueue(small)  # no room left: spilled
    assert (writer.counters.queued, writer.counters.spilled) == (1, 1)
    writer.start()
    assert writer.flush(timeout=10)
    final = writer.close(timeout=0)
    assert [event for event, _ in dead.items] == [large, small]
    assert (final.spilled, final.dead_lettered) == (0, 2)


@pytest.mark.fault
def test_a_file_is_kept_while_any_of_its_events_is_not_done(
    host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 4096)
    events = _events_of(1024, 16)  # four files of four
    dead = DeadLetters()
    # A server that holds each batch's connection attempt until the test has looked at the
    # spool, then hangs up: the batch is given up on (acknowledged) and the next one comes.
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        port = server.getsockname()[1]
        writer = BufferedWriter(
            host_models.EventLog,
            f"host=127.0.0.1 port={port} dbname=x user=x sslmode=disable gssencmode=disable",
            spool=Spool(tmp_path),
            retry=RetryPolicy(max_attempts=1),
            max_queued=4,  # the rest spill, and are read back in turn
            batch_size=3,
            connect_timeout=10,
            on_dead_letter=dead,
        )
        for event in events:
            writer.enqueue(event)
        names = [path.name for path in segments(tmp_path)]
        assert len(names) == 4
        writer.start()
        looks = 0
        deadline = time.monotonic() + 20
        while len(dead.items) < len(events) and time.monotonic() < deadline:
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                done = len(dead.items)  # a batch from events[done] on is being written
                assert [path.name for path in segments(tmp_path)] == names[done // 4 :]
                looks += 1
        assert writer.flush(timeout=10)
        writer.close(timeout=0)
    assert [event for event, _ in dead.items] == events
    assert writer.counters.spool_damaged == 0
    assert looks >= 5


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


@pytest.mark.fault
@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_write_cancelled_under_the_writer_leaves_its_batch_on_the_spool(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    # A host's shutdown that cancels every task cancels the writer's mid-write (held here by
    # a lock) before it closes the writer: the batch is neither written nor given up on, and
    # close must not delete the spool that still holds it.
    user_id, session_id = seed(host_engine, host_models)
    events = chat_events(user_id, session_id, 20)
    dead = DeadLetters()
    with host_engine.connect() as holder:
        holder.execute(text("LOCK TABLE event_logs IN SHARE MODE"))
        writer = await AsyncBufferedWriter(
            host_models.EventLog,
            host_engine.url,
            spool=Spool(tmp_path),
            flush_interval=0.01,
            on_dead_letter=dead,
        ).start()
        for event in events:
            await writer.enqueue(event)
        final = await cancel_the_write_then_close(writer, host_engine)
    assert dead.items == []
    assert (final.written, final.unwritten, final.dead_lettered, final.errors) == (0, 0, 0, 0)
    assert final.queued == 0
    assert stored(host_engine) == []
    async with AsyncBufferedWriter(
        host_models.EventLog, host_engine.url, spool=Spool(tmp_path)
    ) as again:
        assert await again.flush(timeout=20)
    assert (again.counters.replayed, again.counters.written) == (20, 20)
    assert sorted(stored(host_engine)) == sorted(event.id for event in events)
    assert files(tmp_path) == []


@pytest.mark.fault
def test_a_writer_left_open_does_not_hold_the_process_at_exit(tmp_path: Path) -> None:
    # The fsync thread must not keep a process alive whose program forgot close(): the exit
    # hook closes the writer, and the events stay on the spool.
    script = textwrap.dedent(
        f"""
        import uuid
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter, Spool

        models = build_host_models()
        writer = BufferedWriter(models.EventLog, {DOWN!r}, spool=Spool({str(tmp_path)!r},
                                fsync=0.05), exit_timeout=0.1).start()
        key = uuid.uuid4()
        writer.enqueue(session_id=key, user_id=key, event_type="x")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=TESTS, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    [segment] = segments(tmp_path)
    assert decode_event(segment.read_bytes()[8:]).event_type == "x"


@pytest.mark.fault
def test_a_process_without_stdin_gives_its_spools_descriptor_0_back(tmp_path: Path) -> None:
    # A daemon that closed its stdin gets descriptor 0 for the next file it opens: the lock
    # of one writer, then segments of another (the file, or the descriptor its memory map
    # holds). Each must be synced and closed like any other.
    script = textwrap.dedent(
        f"""
        import os, time, uuid
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter, Spool
        from eventlog_persist import _spool

        _spool.SEGMENT_BYTES = 4096
        synced = []
        _spool._fdatasync = lambda fd: synced.append(os.readlink(f"/proc/self/fd/{{fd}}"))
        os.close(0)

        def fd_0():
            return os.readlink("/proc/self/fd/0") if os.path.exists("/proc/self/fd/0") else ""

        models = build_host_models()
        spool = {str(tmp_path)!r}
        a = BufferedWriter(models.EventLog, {DOWN!r}, spool=Spool(spool + "/a"))
        assert fd_0().endswith("/lock")
        b = BufferedWriter(models.EventLog, {DOWN!r}, spool=Spool(spool + "/b", fsync=0.02))
        a.close(timeout=0)
        a = BufferedWriter(models.EventLog, {DOWN!r}, spool=Spool(spool + "/a"))
        a.close(timeout=0)  # the lock was given back
        assert fd_0() == ""
        key = uuid.uuid4()

        def enqueue_until(test):
            while not test():
                b.enqueue(session_id=key, user_id=key, event_type="x", payload={{"t": "x" * 100}})

        enqueue_until(lambda: fd_0().endswith(".seg"))  # the first segment, mapped
        first = fd_0()
        b.enqueue(session_id=key, user_id=key, event_type="x")
        synced.clear()
        deadline = time.monotonic() + 10
        while first not in synced and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first in synced, synced  # the sync thread syncs it
        enqueue_until(lambda: fd_0() != first)  # the second: the first one is closed
        assert fd_0().endswith(".seg"), fd_0()
        pid = os.fork()
        if pid == 0:  # the child lets go of the parent's files, descriptor 0 too
            os._exit(0 if fd_0() == "" else 1)
        assert os.waitpid(pid, 0)[1] == 0
        b.close(timeout=0)
        assert fd_0() == "", fd_0()
        print(b.counters.spilled > 0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=TESTS, capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr
    assert len(segments(tmp_path / "b")) == 2


def test_closing_twice_does_not_touch_the_next_writers_spool(
    host_models: HostModels, tmp_path: Path
) -> None:
    first = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path, fsync=0.01))
    assert "eventlog-spool-sync" in [thread.name for thread in threading.enumerate()]
    first.close(timeout=0)
    deadline = time.monotonic() + 5
    while "eventlog-spool-sync" in [thread.name for thread in threading.enumerate()]:
        assert time.monotonic() < deadline, "the sync thread is still running"
        time.sleep(0.01)
    second = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    layout = files(tmp_path)
    first.close(timeout=0)
    assert files(tmp_path) == layout  # its lock is still there, still held
    with pytest.raises(SpoolInUseError):
        BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path))
    second.close(timeout=0)


def test_the_sync_thread_ends_when_its_writer_is_dropped(
    host_models: HostModels, tmp_path: Path
) -> None:
    def syncers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "eventlog-spool-sync"]

    before = syncers()
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path, fsync=0.01))
    [syncer] = [thread for thread in syncers() if thread not in before]
    time.sleep(0.05)  # it holds no reference to the journal between two syncs
    del writer
    gc.collect()
    syncer.join(5)
    assert not syncer.is_alive()


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
        # The child holds none of the parent's spool files open (nor so its lock).
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                ok = ok and not os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    final = writer.close(timeout=0)
    assert final.spilled == 1  # the parent's spool is intact
    assert len(segments(tmp_path)) == 1


def test_a_failed_spool_write_drops_and_reports_and_leaves_no_partial_record(
    file_mode: str, host_models: HostModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = DeadLetters()
    key = uuid.uuid4()
    writer = BufferedWriter(host_models.EventLog, DOWN, spool=Spool(tmp_path), on_dead_letter=dead)
    first, second, third = (new_event(session_id=key, user_id=key, event_type="x") for _ in "abc")
    # The file is extended for every record, so that each is written with pwrite(), the
    # call that meets a full disk (the records copied into the reserved room make none).
    monkeypatch.setattr(spool_module, "RESERVE_BYTES", 1)
    writer.enqueue(first)
    real_pwrite = os.pwrite

    def short_write(fd: int, data: bytes, offset: int) -> int:
        return real_pwrite(fd, data[:10], offset)  # the disk filled up mid-record

    monkeypatch.setattr(spool_module.os, "pwrite", short_write)
    writer.enqueue(second)
    monkeypatch.setattr(spool_module.os, "pwrite", real_pwrite)
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
    file_mode: str, host_engine: Engine, host_models: HostModels, tmp_path: Path
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
        spilled_seen = [0] * 4

        def produce(worker: int) -> None:
            for i in range(400):
                writer.enqueue(
                    session_id=session_id,
                    user_id=user_id,
                    event_type="chat",
                    payload={"w": worker, "i": i},
                )
                # Right after an enqueue that overflowed, its event is on the spool only.
                spilled_seen[worker] = max(spilled_seen[worker], writer.counters.spilled)

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        most_spilled = max(spilled_seen)
        assert writer.flush(timeout=30)
    final = writer.counters
    assert most_spilled > 0  # the queue overflowed to the spool and was read back
    rows = stored(host_engine)
    assert len(rows) == len(set(rows)) == 1600
    assert (final.written, final.dropped, final.spilled, final.dead_lettered) == (1600, 0, 0, 0)
    assert files(tmp_path) == []


def test_flush_returns_once_close_leaves_the_spooled_events_on_the_spool(
    host_models: HostModels, tmp_path: Path
) -> None:
    # The database is down: the queue holds 5 events, 95 more are on the spool only.
    writer = BufferedWriter(
        host_models.EventLog, DOWN, spool=Spool(tmp_path), max_queued=5, retry=FAST_RETRY
    ).start()
    key = uuid.uuid4()
    for _ in range(100):
        writer.enqueue(session_id=key, user_id=key, event_type="x")
    flushed: list[bool] = []
    waiting = threading.Thread(target=lambda: flushed.append(writer.flush()))
    waiting.start()
    final = writer.close(timeout=0.2)
    waiting.join(10)
    assert flushed == [True]  # given up: left on the spool for the next writer
    assert final.spilled == 100
    started = time.monotonic()
    assert writer.flush(timeout=5)
    assert time.monotonic() - started < 1


@pytest.mark.asyncio
async def test_async_flush_returns_once_close_leaves_the_spooled_events_on_the_spool(
    host_models: HostModels, tmp_path: Path
) -> None:
    writer = await AsyncBufferedWriter(
        host_models.EventLog, DOWN, spool=Spool(tmp_path), max_queued=5, retry=FAST_RETRY
    ).start()
    key = uuid.uuid4()
    for _ in range(100):
        await writer.enqueue(session_id=key, user_id=key, event_type="x")
    waiting = asyncio.ensure_future(writer.flush())
    await asyncio.sleep(0.1)
    final = await writer.close(timeout=0.2)
    assert await asyncio.wait_for(waiting, 10)
    assert final.spilled == 100
    assert await asyncio.wait_for(writer.flush(timeout=5), 1)


def test_closing_from_the_dead_letter_hook_with_events_on_the_spool_ends_the_thread(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    closed: list[WriterCounters] = []
    threads: list[threading.Thread] = []

    def close_on_first(event: NewEvent, error: BaseException) -> None:
        if not closed:
            threads.append(threading.current_thread())  # the writer's own
            closed.append(writer.close())

    writer = BufferedWriter(
        host_models.EventLog,
        host_engine.url,
        spool=Spool(tmp_path),
        max_queued=5,
        batch_size=5,
        flush_interval=0.05,
        on_dead_letter=close_on_first,
    )
    writer.enqueue(session_id=uuid.uuid4(), user_id=user_id, event_type="refused")  # no session
    for _ in range(200):
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="ok")
    writer.start()
    wait_for(lambda: bool(closed), 10, "the hook's close")
    assert closed[0].spilled > 0  # left on the spool for the next writer
    wait_for(lambda: not threads[0].is_alive(), 10, "the writer thread's end")
