"""How a process's end reaches the thread writers: SIGTERM, and ``fork()``.

Python runs ``atexit`` hooks on a normal exit, ``sys.exit``, an unhandled exception and
SIGINT, but not when SIGTERM (what ``docker stop`` and Kubernetes send) kills the process
with the default action. So the first writer started in the main thread installs one
SIGTERM handler for every writer, and a thread that waits for it: the handler wakes the
thread, which closes the writers (together, each within its ``exit_timeout``), then gives
the signal its previous effect. A second SIGTERM while they close takes that effect at
once. A forked child gets fresh writers of its own. A ``multiprocessing`` child (fork,
forkserver) ends with ``os._exit``, which runs no ``atexit`` hook, so its writers are also
closed by a multiprocessing finalizer.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import weakref
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger("eventlog_persist")


class _Closable(Protocol):
    def _begin_close(self) -> None: ...
    def _close_since(self, started: float) -> None: ...


class _Forkable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_writers: weakref.WeakSet[Any] = weakref.WeakSet()  # closed on SIGTERM
_forkable: weakref.WeakSet[Any] = weakref.WeakSet()  # reset in a forked child
_previous: Any = None  # the SIGTERM handler ours replaced; None while ours is not installed
_installed = False
_lock = threading.Lock()
_closer: threading.Thread | None = None  # waits for a SIGTERM, then closes the writers
_pipe: tuple[int, int] | None = None  # the closer reads, the handler writes
_signalled = False  # a SIGTERM came: the next one (the closer's, or another) ends the process
_finalizer: Any = None  # closes the writers at a multiprocessing child's end
_exit_hook = False  # close_all is an atexit hook (a forked child inherits it)


def reset_after_fork(writer: _Forkable) -> None:
    """Have ``writer`` reset itself in a forked child (from its construction on)."""
    _forkable.add(writer)


def watch(writer: _Closable, *, sigterm: bool) -> None:
    """Close ``writer`` at the process's exit, on SIGTERM (when ``sigterm``) and at a
    multiprocessing child's end."""
    global _installed, _previous, _finalizer, _exit_hook
    with _lock:
        _writers.add(writer)
        if not _exit_hook:
            # One hook, registered by the first writer: exit hooks run last in, first out, so
            # the host's own hooks registered after it (which may still enqueue) run first.
            atexit.register(close_all)
            _exit_hook = True
        util = sys.modules.get("multiprocessing.util")
        if util is not None and _finalizer is None:
            # Its registry is emptied when a child starts, after the fork: so at a start.
            _finalizer = util.Finalize(None, _close_all, exitpriority=100)
        if not sigterm:
            return
        if _installed:  # in a forked child, the parent's handler: this process needs a closer
            _start_closer()
            return
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "a BufferedWriter was started outside the main thread, where no signal "
                "handler can be installed: SIGTERM will not flush it. Close it in the "
                "application's shutdown, or start it from the main thread"
            )
            return
        current = signal.getsignal(signal.SIGTERM)
        if current is signal.SIG_IGN or current is None:
            return  # the host ignores SIGTERM, or handles it outside Python: leave it be
        _start_closer()
        _previous = current
        signal.signal(signal.SIGTERM, _on_sigterm)
        _installed = True


def _start_closer() -> None:
    """Start the thread the handler wakes (under ``_lock``): not in the handler, which may run
    where a thread cannot start (inside threading's own locks, or at interpreter exit)."""
    global _closer, _pipe
    if _closer is not None:
        return
    pipe = os.pipe()
    closer = threading.Thread(
        target=_close_on_signal, args=(pipe[0],), name="eventlog-persist-sigterm", daemon=True
    )
    closer.start()
    _closer, _pipe = closer, pipe
    atexit.register(_finish_closing)


def unwatch(writer: _Closable) -> None:
    with _lock:
        _writers.discard(writer)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _signalled
    previous = _previous
    if callable(previous):
        # The host's or its server's handler (uvicorn, gunicorn) shuts down gracefully and
        # exits normally: the writers' exit hooks flush them after the last request.
        previous(signum, frame)
        return
    pipe = _pipe
    if _signalled or pipe is None:
        # The closer's own, once the writers are closed; or a second SIGTERM while they close;
        # or no writer started in this process.
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signum)  # the default action: the process ends by SIGTERM
        os._exit(128 + signum)  # PID 1 of a container does not take it
    _signalled = True
    # The closer, not this handler, closes the writers: the signal may have landed in the
    # main thread while it held a writer's lock (in enqueue), which close takes.
    os.write(pipe[1], bytes([signum]))


def _writers_now() -> list[Any]:
    with _lock:
        return list(_writers)


def close_all() -> None:
    """Close every watched writer together, at the process's end.

    Each is told first, so their threads write their queues at once, and the process waits
    the longest ``exit_timeout``, not their sum (three writers of 10 s against a database
    that is down would outlast Kubernetes' 30 s grace period one after another).
    """
    writers = _writers_now()
    started = time.monotonic()
    for writer in writers:
        writer._begin_close()
    for writer in writers:
        try:
            writer._close_since(started)
        except Exception:  # pragma: no cover - close reports through the hook and the log
            logger.exception("closing a BufferedWriter at the process's end failed")


def _close_all() -> None:
    close_all()


def _close_on_signal(read: int) -> None:
    signum = os.read(read, 1)[0]
    try:
        _close_all()
    finally:
        os.kill(os.getpid(), signum)  # to the main thread's handler, which ends the process


def _finish_closing() -> None:
    """At exit: let a closing that a SIGTERM started finish (the closer is a daemon)."""
    closer = _closer
    if _signalled and closer is not None:
        closer.join()


def _after_fork_in_child() -> None:
    global _lock, _closer, _pipe, _signalled, _finalizer
    _lock = threading.Lock()  # another thread may have held it at the fork
    if _pipe is not None:
        for end in _pipe:
            os.close(end)
    _closer, _pipe, _signalled, _finalizer = None, None, False, None
    for writer in list(_forkable):
        writer._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
