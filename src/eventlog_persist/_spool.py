"""The spool: a local journal that keeps a buffered writer's events across a killed process."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import mmap
import os
import re
import socket
import struct
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Final, Literal, TypeAlias

import msgspec

from eventlog_persist._events import NewEvent
from eventlog_persist.exceptions import ConfigurationError, SpoolInUseError

__all__ = ["Journal", "Spool", "decode_event", "encode_event"]

logger = logging.getLogger("eventlog_persist")

SEGMENT_BYTES: Final = 1 << 20
"""A segment file is closed and a new one started when the next record would pass this."""
DRAINED_ROTATE_BYTES: Final = 64 << 10
"""When every record was acknowledged and the open segment holds this much, it is replaced."""
RESERVE_BYTES: Final = 64 << 10
"""The open segment is extended this much at a time, with zeros (within ``max_bytes``)."""
LOCK_WAIT: Final = 0.25
"""Seconds a starting writer retries its own spool's lock (an adopter may hold it briefly)."""

FsyncPolicy: TypeAlias = Literal["never", "always"] | float
"""When spooled records are forced to disk: ``"never"``, ``"always"``, or every N seconds."""

_FRAME: Final = struct.Struct("<II")  # body length, CRC32 of the body
_frame: Final = _FRAME.pack
_crc32: Final = zlib.crc32
_VERSION: Final = 2
_SEGMENT_RE: Final = re.compile(r"^(\d{12})\.seg$")
_fdatasync: Final[Callable[[int], None]] = getattr(os, "fdatasync", os.fsync)


@dataclass(frozen=True, slots=True)
class Spool:
    """Where and how a buffered writer journals its events on local disk (opt-in).

    Every event is appended to a journal in ``directory`` before ``enqueue`` returns, and
    removed once the database stored it (or the writer gave up on it and told the
    dead-letter hook). A writer started later on the same directory writes what is left:
    its own process's journal and those of processes that are gone. Each process gets its
    own journal under ``directory``, so every worker of a server can share it.

    Attributes:
        directory: A directory on a local file system, one per destination (model and
            database). Created if missing.
        fsync: When records are forced to disk. ``"never"`` (default): a record is in the
            operating system's page cache when ``enqueue`` returns, which survives the
            process being killed (SIGKILL, out of memory), not a power loss or kernel crash.
            A number of seconds: at most that much is lost to a power loss (a background
            thread syncs). ``"always"``: every ``enqueue`` waits for the disk.
        max_bytes: Bound on the journal's size. When it is reached, because the database
            has been down for a long time, events are dropped and reported as with a full
            queue (`QueueFullError`).

    Raises:
        ConfigurationError: A value is not valid.

    .. versionadded:: 0.3.0
    """

    directory: str | os.PathLike[str]
    _: KW_ONLY
    fsync: FsyncPolicy = "never"
    max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        directory = self.directory
        if (
            not isinstance(directory, (str, os.PathLike))
            or not os.fspath(directory)
            or "\x00" in os.fsdecode(os.fspath(directory))
        ):
            raise ConfigurationError(
                f"Spool(directory={directory!r}) is not valid; pass the path of a directory "
                "on a local file system (a str or pathlib.Path, without NUL)"
            )
        fsync = self.fsync
        if isinstance(fsync, str):
            if fsync not in ("never", "always"):
                raise ConfigurationError(
                    f"Spool(fsync={fsync!r}) is not valid; use 'never', 'always', or the "
                    "seconds between two syncs (a number > 0, e.g. 0.05)"
                )
        elif (
            isinstance(fsync, bool)
            or not isinstance(fsync, (int, float))
            or not (0 < fsync <= 3600 and math.isfinite(fsync))
        ):
            raise ConfigurationError(
                f"Spool(fsync={fsync!r}) is not valid; use 'never', 'always', or the seconds "
                "between two syncs (a number > 0 and <= 3600, e.g. 0.05)"
            )
        max_bytes = self.max_bytes
        if type(max_bytes) is not int or max_bytes < 4096:
            raise ConfigurationError(
                f"Spool(max_bytes={max_bytes!r}) is not valid; use an int >= 4096 (bytes of "
                "disk the journal may take, e.g. 1 << 30)"
            )


# --- records ----------------------------------------------------------------------------------


class _Body(msgspec.Struct, array_like=True, frozen=True):
    """A record's body: a MessagePack array of the event's fields, the format version first.

    ``created_at`` goes as a MessagePack timestamp (an instant), its UTC offset in seconds
    beside it so the event comes back with the clock it was made with.
    """

    version: int
    id: uuid.UUID
    created_at: datetime
    utc_offset: int
    session_id: uuid.UUID | int
    user_id: uuid.UUID | int
    project_id: uuid.UUID | int | None
    agent_id: uuid.UUID | int | None
    event_type: str
    error_code: str | None
    tool_name: str | None
    approval_status: str | None
    redacted_paths: tuple[str, ...]
    payload_json: str
    request_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None


# One C call builds the body: the spool's share of `enqueue` is mostly this and the write.
_encode: Final = msgspec.msgpack.Encoder(uuid_format="bytes").encode
_decode: Final = msgspec.msgpack.Decoder(_Body).decode


def encode_event(event: NewEvent) -> bytes:
    """One framed record: body length, CRC32 of the body, body (see `_Body`).

    Integer keys were checked against their columns (at most BIGINT), so they fit.
    """
    created = event.created_at
    if created.tzinfo is UTC:
        offset = 0
    else:
        delta = created.utcoffset()
        offset = 0 if delta is None else delta.days * 86400 + delta.seconds
    body = _encode(
        (
            _VERSION,
            event.id,
            created,
            offset,
            event.session_id,
            event.user_id,
            event.project_id,
            event.agent_id,
            event.event_type,
            event.error_code,
            event.tool_name,
            event.approval_status,
            event.redacted_paths,
            event.payload_json,
            event.request_id,
            event.trace_id,
            event.span_id,
        )
    )
    return _frame(len(body), _crc32(body)) + body


def decode_event(body: bytes | memoryview) -> NewEvent:
    """The event of a record's body, as `encode_event` wrote it.

    Raises:
        ValueError: The body is not a record this version can read.
    """
    record = _decode(body)
    if record.version != _VERSION:
        raise ValueError(f"unknown spool record version {record.version}")
    offset = record.utc_offset
    created = record.created_at
    if offset:
        created = created.astimezone(timezone(timedelta(seconds=offset)))
    return NewEvent(
        record.id,
        record.session_id,
        record.user_id,
        record.event_type,
        record.payload_json,
        created,
        record.project_id,
        record.agent_id,
        record.error_code,
        record.tool_name,
        record.approval_status,
        record.redacted_paths,
        record.request_id,
        record.trace_id,
        record.span_id,
    )


def _records(
    data: bytes, start: int, limit: int, *, resync: bool = True
) -> Iterator[tuple[int, int, memoryview | None]]:
    """``(offset, end, body)`` of each record in ``data[start:]``, at most ``limit``.

    A damaged stretch (a checksum that does not match, a length that a disk error changed)
    gives ``body=None`` and ``end`` at the next whole record, where the parse goes on; a
    stretch with no whole record after it (a torn tail) gives ``end=-1`` and ends the parse.
    Zeros to the end (the room a writer that was killed had reserved) end it too, silently.
    Without ``resync`` (a segment this writer appends to, whose records it counts one by
    one) a damaged body is skipped by its length and a damaged length ends the parse.
    """
    view = memoryview(data)
    size = len(data)
    zeros = len(data.rstrip(b"\0"))  # where the zeros to the end start
    held: dict[int, bool] = {}  # `_chain_holds`, by offset
    at = start
    while at < size and limit > 0:
        if at >= zeros:
            return
        length = crc = 0
        if at + _FRAME.size <= size:
            length, crc = _FRAME.unpack_from(data, at)
        end = at + _FRAME.size + length
        if length and end <= size:
            body = view[at + _FRAME.size : end]
            if _crc32(body) == crc:
                yield at, end, body
                at = end
                limit -= 1
                continue
            if not resync or _chain_holds(data, view, end, zeros, held):  # the length held
                yield at, end, None
                at = end
                limit -= 1
                continue
        following = _next_whole(data, view, at + 1) if resync else -1
        if following < 0:
            yield at, -1, None
            return
        yield at, following, None
        at = following
        limit -= 1


def _chain_holds(data: bytes, view: memoryview, at: int, zeros: int, held: dict[int, bool]) -> bool:
    """Whether the lengths from ``at`` lead to a whole record, the zeros or the end of
    ``data`` (``zeros``: where the zeros to its end start; ``held``: answers so far).

    A length that a disk error changed lands inside another record, where the next length
    read is a random one: the chain breaks at once (or within a few steps).
    """
    size = len(data)
    walked = []
    answer = False
    while True:
        if at in held:
            answer = held[at]
            break
        walked.append(at)
        if at >= zeros:
            answer = True
            break
        if at + _FRAME.size > size:
            break
        length, crc = _FRAME.unpack_from(data, at)
        end = at + _FRAME.size + length
        if not length or end > size:
            break
        if _crc32(view[at + _FRAME.size : end]) == crc:
            answer = True
            break
        at = end
    for offset in walked:
        held[offset] = answer
    return answer


def _next_whole(data: bytes, view: memoryview, at: int) -> int:
    """The first offset from ``at`` where a whole record starts; -1 if none does.

    Byte by byte, only after damage: a length past the end is rejected at once, and a
    checksum matches by chance once in 2**32 (`_decoded` then refuses the body).
    """
    size = len(data)
    unpack = _FRAME.unpack_from
    for offset in range(at, size - _FRAME.size + 1):
        length, crc = unpack(data, offset)
        end = offset + _FRAME.size + length
        if length and end <= size and _crc32(view[offset + _FRAME.size : end]) == crc:
            return offset
    return -1


# --- the journal --------------------------------------------------------------------------------


class _Segment:
    """One journal file: its records in the order they were appended."""

    __slots__ = ("inherited", "next", "number", "path", "queued", "records", "size")

    def __init__(self, number: int, path: Path, *, inherited: bool) -> None:
        self.number = number
        self.path = path
        self.size = 0  # bytes of whole records (for an inherited segment: up to a torn tail)
        self.records = 0
        self.queued = 0  # of its records, those in the writer's queue (or its batch)
        self.inherited = inherited  # written by an earlier writer: replayed
        self.next: _Segment | None = None


@dataclass(slots=True)
class _Cursor:
    """The first spooled record not read back yet."""

    segment: _Segment
    offset: int = 0
    index: int = 0


@dataclass(slots=True)
class Reading:
    """Records read back from the journal, to hand to `Journal.commit` under the lock."""

    events: list[NewEvent]
    runs: list[tuple[_Segment, int]]
    cursor: _Cursor | None
    consumed: int  # records the cursor moved past (events, plus records lost to damage)
    damaged: int
    replayed: int


def _process_name() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _segment_name(number: int) -> str:
    return f"{number:012d}.seg"


def _segment_files(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        match = _SEGMENT_RE.match(path.name)
        if match:
            found.append((int(match[1]), path))
    return sorted(found)


_SPOOL_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]+-[0-9]+\Z")
"""The name `_process_name` gives a process's spool; other folders (``lost+found`` at the root
of a volume, say) are left alone."""


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# File systems where writing zeros allocates the blocks that a mapped page later fills in
# place: ext2/3/4, XFS, tmpfs. On copy-on-write ones (btrfs, ZFS) a store into a mapped page
# may need a new block, and a full disk then ends the process with SIGBUS; network file
# systems have their own mmap caveats. Elsewhere each record is written with pwrite().
_MAPPABLE_FILE_SYSTEMS: Final = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space as \040


def _allocates_on_write(directory: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether ``directory`` lies on a file system in `_MAPPABLE_FILE_SYSTEMS` (Linux only)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return False
    where = str(directory.resolve())
    best, kind = "", ""
    for line in lines:
        fields = line.split(" ")
        try:
            mount_point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            fs_type = fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        inside = where == mount_point or where.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fs_type
    return kind in _MAPPABLE_FILE_SYSTEMS


class Journal:
    """One writer's journal: ``<directory>/<host>-<pid>/`` with a lock and segment files.

    The records are kept in one order, which is also the order of the writer's queue:
    ``[acknowledged | in the queue | spooled only (from the cursor) ]``; each segment counts
    its records in the queue (``queued``). The writer calls every method but `read` with its
    lock held (or on its event loop).
    """

    def __init__(self, spool: Spool, table: str) -> None:
        self.spool = spool
        self.table = table
        self.max_bytes = spool.max_bytes
        self.root = Path(os.fspath(spool.directory))
        self.dir = self.root / _process_name()
        self.always = spool.fsync == "always"
        self.syncs = spool.fsync != "never"
        self.cursor: _Cursor | None = None
        self.spilled = 0  # records on disk only, from the cursor on
        self.damaged = 0
        self.replayed = 0
        self._sealed = 0  # bytes of the segments before the open one
        self.closed = False
        self.pinned = False  # the queue's order no longer matches: delete nothing more
        self._first: _Segment | None = None
        self._active: _Segment | None = None
        self._fd = -1  # the open segment's file, and its records mapped in memory
        self._map: mmap.mmap | None = None
        self._reserved = 0  # the file's size: its records, then zeros
        self._lock_fd = -1
        self._guard = threading.Lock()  # the open segment's fd, against the sync thread
        self._dirty = False
        self._stop = threading.Event()
        self.mapped = _allocates_on_write(self.dir)  # records copied into a mapped file
        self._open()

    # -- opening: lock, adopt, scan --

    def _open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.dir.mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"Spool(directory={os.fspath(self.spool.directory)!r}) cannot be used: "
                f"{exc.strerror or exc}; pass a directory this process may create and write, "
                "on a local file system"
            ) from exc
        self._lock_own()
        try:
            own = _segment_files(self.dir)
            inherited = [path for _, path in own]
            number = own[-1][0] + 1 if own else 1
            for sibling in sorted(self.root.iterdir()):
                if sibling != self.dir and _SPOOL_NAME_RE.match(sibling.name) and sibling.is_dir():
                    moved = self._adopt(sibling, number)
                    inherited.extend(moved)
                    number += len(moved)
            for path in inherited:
                self._scan(path)
            self._start_segment()
        except BaseException:
            self._release()
            raise
        if self.spilled:
            logger.warning(
                "replaying %d events spooled by earlier writers in %s", self.spilled, self.root
            )
        if isinstance(self.spool.fsync, (int, float)):
            threading.Thread(
                target=_sync_loop,
                args=(weakref.ref(self), float(self.spool.fsync), self._stop),
                name="eventlog-spool-sync",
                daemon=True,
            ).start()

    def _lock_own(self) -> None:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            self.dir.mkdir(exist_ok=True, mode=0o700)
            path = self.dir / "lock"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # removed by a writer adopting it as an orphan
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:  # a starting writer adopting it gives it back
                    time.sleep(0.02)
                    continue
                raise SpoolInUseError(
                    f"the spool {self.dir} is in use by another writer of this process "
                    f"(pid {os.getpid()}); give each writer its own Spool directory"
                ) from None
            try:
                linked = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                linked = False
            if linked:  # not removed by a writer that adopted it as an orphan meanwhile
                break
            os.close(fd)
        self._lock_fd = fd
        table_file = self.dir / "table"
        try:
            found = table_file.read_text()
        except FileNotFoundError:
            table_file.write_text(self.table)
            return
        if found != self.table:
            self._release()
            raise ConfigurationError(
                f"the spool {self.dir} holds events for the table {found}, not {self.table}; "
                "use one Spool directory per destination (model and database)"
            )

    def _adopt(self, sibling: Path, number: int) -> list[Path]:
        """Move the segments of a dead process's spool into ours; return their new paths."""
        lock = sibling / "lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return []  # being created, or adopted by someone else
        except OSError as exc:
            logger.warning(
                "not replaying the spool %s: its lock cannot be opened (%s); the writers that "
                "share a Spool directory must run as one user",
                sibling,
                exc,
            )
            return []
        moved: list[Path] = []
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # its writer is alive
            if os.fstat(fd).st_nlink == 0:
                return []  # adopted by another writer while we waited
            try:
                table = (sibling / "table").read_text()
            except FileNotFoundError:
                table = self.table
            if table != self.table:
                logger.warning(
                    "not replaying the spool %s: it holds events for the table %s, this "
                    "writer writes %s; use one Spool directory per destination",
                    sibling,
                    table,
                    self.table,
                )
                return []
            for _, path in _segment_files(sibling):
                target = self.dir / _segment_name(number)
                os.rename(path, target)
                moved.append(target)
                number += 1
            if moved and self.syncs:
                _fsync_directory(self.dir)
            for name in ("table", "lock"):
                with contextlib.suppress(FileNotFoundError):
                    (sibling / name).unlink()
            with contextlib.suppress(OSError):
                sibling.rmdir()
            logger.warning("adopted the spool of a process that is gone: %s", sibling)
        finally:
            os.close(fd)
        return moved

    def _scan(self, path: Path) -> None:
        """Count the whole records of an inherited segment; report damaged ones."""
        number = int(path.name.split(".")[0])
        segment = _Segment(number, path, inherited=True)
        data = path.read_bytes()
        for offset, end, body in _records(data, 0, len(data)):
            if end < 0:
                self._report(path, offset, len(data) - offset, torn=True)
                break
            if _decoded(body) is None:
                self._report(path, offset, end - offset, torn=False)
            else:
                segment.records += 1
            segment.size = end
        if not segment.records:
            path.unlink()
            return
        self._link(segment)
        self.spilled += segment.records
        if self.cursor is None:
            self.cursor = _Cursor(segment)

    def _report(
        self, path: Path, offset: int, length: int, *, torn: bool, now: bool = True
    ) -> None:
        if now:
            self.damaged += 1
        what = (
            "a torn record (cut short by a crash)"
            if torn
            else "a damaged record (or several: the bytes up to the next whole record)"
        )
        logger.error(
            "spool %s: %s at byte %d, %d bytes skipped; the events in them are lost, the "
            "records around them are replayed",
            path,
            what,
            offset,
            length,
        )

    def _link(self, segment: _Segment) -> None:
        if self._active is None:
            self._first = segment
        else:
            self._active.next = segment
            self._sealed += self._active.size
        self._active = segment

    def _start_segment(self) -> _Segment:
        number = self._active.number + 1 if self._active is not None else 1
        path = self.dir / _segment_name(number)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if self.syncs:
            _fsync_directory(self.dir)
        self._seal()
        with self._guard:
            self._fd = fd
        segment = _Segment(number, path, inherited=False)
        self._link(segment)
        return segment

    def _seal(self) -> None:
        """Close the open segment's file, cut to its records (the reserved zeros go)."""
        mapped, self._map = self._map, None
        if mapped is not None:
            mapped.close()
        with self._guard:
            fd, self._fd = self._fd, -1
        if fd < 0:
            return
        active = self._active
        try:
            if active is not None and self._reserved > active.size:
                os.ftruncate(fd, active.size)
            if self.syncs:
                _fdatasync(fd)
        except OSError:
            logger.exception("could not close the open spool segment in %s", self.dir)
        finally:
            self._reserved = 0
            os.close(fd)

    def _reserve(self, record: bytes, start: int) -> None:
        """Write ``record`` at ``start`` with ``pwrite()``, then zeros up to a multiple of
        `RESERVE_BYTES` (at most to the segment's or the spool's bound), and map the file
        into memory: the next records are copied into the map, without a system call.

        The zeros are written, not only a file size set, so that the disk blocks are
        allocated now: a full disk is an error here, never a fault on a mapped page.
        """
        end = start + len(record)
        if not self.mapped:
            if os.pwrite(self._fd, record, start) != len(record):
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)  # never leave half a record to append after
                raise OSError(errno.ENOSPC, "short write to the spool (the disk is full?)")
            return
        size = end
        if end < SEGMENT_BYTES:
            size = min(
                -(-end // RESERVE_BYTES) * RESERVE_BYTES,
                SEGMENT_BYTES,
                self.max_bytes - self._sealed,  # append checked that ``end`` fits
            )
        data = record + bytes(size - end)
        fd = self._fd  # -1 once closed: the write fails
        mapped, self._map = self._map, None
        if mapped is not None:
            mapped.close()
        self._reserved = start
        try:
            if os.pwrite(fd, data, start) != len(data):
                raise OSError(errno.ENOSPC, "short write to the spool (the disk is full?)")
            self._map = mmap.mmap(fd, size)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # never leave half a record to append after
            raise
        self._reserved = size

    # -- the writer's calls --

    def append(self, record: bytes, queued: bool) -> str | None:
        """Write one record before ``enqueue`` returns; ``queued``: it is in the queue too.

        Returns:
            None, or why nothing of the record was kept: the spool is full, or it could not
            be written (the disk is full, the spool is closed...).
        """
        active = self._active
        if active is None:  # pragma: no cover - opened by the constructor
            return "the spool is not open"
        start = active.size
        length = len(record)
        if self._sealed + start + length > self.max_bytes:
            return f"the spool is full ({self.max_bytes} bytes)"
        end = start + length
        mapped = self._map
        if end <= self._reserved and mapped is not None:
            mapped[start:end] = record  # into the page cache, as write() would, without a call
        else:
            if end > SEGMENT_BYTES and start and not self.closed:
                active = self._start_segment()
                self._trim()
                start, end = 0, length
            try:
                self._reserve(record, start)
            except OSError as exc:
                if self.closed:
                    return "the spool is closed"
                return f"the spool could not be written ({exc})"
        active.size = end
        active.records += 1
        if self.syncs:
            if self.always:
                _fdatasync(self._fd)
            else:
                self._dirty = True
        if queued:
            active.queued += 1
        else:
            if not self.spilled:
                self.cursor = _Cursor(active, start, active.records - 1)
            self.spilled += 1
        return None

    def ack(self, count: int) -> None:
        """The first ``count`` queued records were written or given up: drop them."""
        if self.pinned or self.closed:
            return
        segment = self._first
        while count and segment is not None:
            queued = segment.queued
            if queued > count:
                segment.queued = queued - count
                break
            count -= queued
            segment.queued = 0
            segment = segment.next
        self._trim()
        active = self._active
        if (
            active is not None
            and self._first is active  # nothing before it is needed any more
            and not active.queued
            and not self.spilled
            and active.size >= DRAINED_ROTATE_BYTES
        ):
            self._start_segment()
            self._trim()

    def _trim(self) -> None:
        """Delete leading segments that nothing in the queue or on the cursor's way needs."""
        cursor = self.cursor if self.spilled else None
        while (segment := self._first) is not None and segment is not self._active:
            if segment.queued or (cursor is not None and cursor.segment is segment):
                return
            self._first = segment.next
            self._sealed -= segment.size
            try:
                segment.path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                logger.exception("could not delete the spool segment %s", segment.path)

    def read(self, max_events: int, max_bytes: int, empty: bool) -> Reading:
        """Read back spooled records, oldest first, without the writer's lock.

        At most ``max_events`` and at most ``max_bytes`` of `NewEvent.size_bytes`, except
        that an ``empty`` queue takes its first event however large, as `enqueue` does.
        Appends may run meanwhile: only records counted in ``spilled`` when this starts are
        read, and each was whole on disk before it was counted (``size`` is raised before
        ``records``, ``records`` before ``spilled``).
        """
        cursor = self.cursor
        limit = min(self.spilled, max_events)
        reading = Reading([], [], cursor, 0, 0, 0)
        if cursor is None or limit <= 0:
            return reading
        segment, offset, index = cursor.segment, cursor.offset, cursor.index
        size = 0
        full = False
        while limit > 0 and not full:
            records = segment.records
            if index >= records:
                if segment.next is None:
                    break
                segment, offset, index = segment.next, 0, 0
                continue
            data = _read_from(segment.path, offset, segment.size)
            fed = at = 0
            # An inherited segment may hold damaged records besides the ``records`` whole ones.
            most = len(data) if segment.inherited else records - index
            for start, end, body in _records(data, 0, most, resync=segment.inherited):
                event = None if end < 0 else _decoded(body)
                if event is None:
                    if end < 0:
                        break
                    at = end
                    if not segment.inherited:  # inherited ones were reported by the scan
                        self._report(
                            segment.path, offset + start, end - start, torn=False, now=False
                        )
                        reading.damaged += 1
                        reading.consumed += 1
                        index += 1
                        limit -= 1
                        if limit <= 0:
                            break
                    continue
                if size + event.size_bytes > max_bytes and (reading.events or not empty):
                    full = True
                    break
                size += event.size_bytes
                reading.events.append(event)
                reading.consumed += 1
                reading.replayed += segment.inherited
                fed += 1
                index += 1
                limit -= 1
                at = end
                if limit <= 0:
                    break
            if fed:
                reading.runs.append((segment, fed))
            offset += at
            if not full and limit > 0 and index < records:
                # The rest of this segment cannot be read (cut short): its events are lost.
                lost = records - index
                if not segment.inherited:
                    self._report(segment.path, offset, segment.size - offset, torn=True, now=False)
                    reading.damaged += 1
                reading.consumed += lost
                limit -= lost
                index, offset = records, segment.size
        reading.cursor = _Cursor(segment, offset, index)
        return reading

    def commit(self, reading: Reading) -> bool:
        """The records read are now in the queue; False if the journal closed meanwhile."""
        if self.closed or not reading.consumed:
            return False
        for segment, count in reading.runs:
            segment.queued += count
        self.spilled -= reading.consumed
        self.damaged += reading.damaged
        self.replayed += reading.replayed
        self.cursor = reading.cursor if self.spilled else None
        self._trim()
        return True

    def sync(self) -> None:
        """Force what was written to disk, if anything was since the last time."""
        with self._guard:
            if not self._dirty or self._fd < 0:
                return
            self._dirty = False
            fd = os.dup(self._fd)
        try:
            _fdatasync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Stop; what was not acknowledged stays on disk for the next writer (`spilled`).

        With nothing left, the process's spool directory is removed.
        """
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        left = self.spilled
        segment = self._first
        while segment is not None:
            left += segment.queued
            segment.queued = 0
            segment = segment.next
        self.spilled = left
        self._seal()
        if not left and not self.pinned:
            segment = self._first
            while segment is not None:
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()
                segment = segment.next
            self._first = None
            self._sealed = 0
            for name in ("table", "lock"):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / name).unlink()
            with contextlib.suppress(OSError):
                self.dir.rmdir()
        elif self.syncs:
            with contextlib.suppress(OSError):
                _fsync_directory(self.dir)
        self._release()

    def forget(self) -> None:
        """In a forked child: let go of the parent's files without touching them."""
        self.closed = True
        if self._map is not None:
            self._map.close()
            self._map = None
        self._reserved = 0
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock: the spool may now be adopted
            self._lock_fd = -1


def _decoded(body: memoryview | None) -> NewEvent | None:
    if body is None:
        return None
    try:
        return decode_event(body)
    except ValueError:  # msgspec's errors and ValidationError are ValueErrors
        return None


def _read_from(path: Path, offset: int, end: int) -> bytes:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read(end - offset)
    except OSError:
        logger.exception("could not read the spool segment %s", path)
        return b""


def _sync_loop(ref: weakref.ref[Journal], interval: float, stop: threading.Event) -> None:
    """The ``fsync=<seconds>`` policy: sync the open segment every ``interval``."""
    while not stop.wait(interval):
        journal = ref()
        if journal is None:
            return
        try:
            journal.sync()
        except OSError:
            logger.exception("could not sync the spool %s", journal.dir)
        del journal
