"""How a process's end reaches the thread writers: SIGTERM, and ``fork()``.

Python runs ``atexit`` hooks on a normal exit, ``sys.exit``, an unhandled exception and
SIGINT, but not when SIGTERM (what ``docker stop`` and Kubernetes send) kills the process
with the default action. So the first writer started in the main thread installs one
SIGTERM handler for every writer: it has a thread close them (each within its
``exit_timeout``), then gives the signal its previous effect. A forked child gets fresh writers
of its own. A ``multiprocessing`` child (fork, forkserver) ends with ``os._exit``, which runs no
``atexit`` hook, so its writers are also closed by a multiprocessing finalizer.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import weakref
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger("eventlog_persist")


class _Closable(Protocol):
    def _close_at_exit(self) -> None: ...


class _Forkable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_writers: weakref.WeakSet[Any] = weakref.WeakSet()  # closed on SIGTERM
_forkable: weakref.WeakSet[Any] = weakref.WeakSet()  # reset in a forked child
_previous: Any = None  # the SIGTERM handler ours replaced; None while ours is not installed
_installed = False
_lock = threading.Lock()
_closer: threading.Thread | None = None  # closing the writers after a SIGTERM
_closed = threading.Event()  # they are: the next SIGTERM takes its previous effect
_finalizer: Any = None  # closes the writers at a multiprocessing child's end


def reset_after_fork(writer: _Forkable) -> None:
    """Have ``writer`` reset itself in a forked child (from its construction on)."""
    _forkable.add(writer)


def watch(writer: _Closable, *, sigterm: bool) -> None:
    """Close ``writer`` on SIGTERM (when ``sigterm``) and at a multiprocessing child's end."""
    global _installed, _previous, _finalizer
    with _lock:
        _writers.add(writer)
        util = sys.modules.get("multiprocessing.util")
        if util is not None and _finalizer is None:
            # Its registry is emptied when a child starts, after the fork: so at a start.
            _finalizer = util.Finalize(None, _close_all, exitpriority=100)
        if not sigterm or _installed:
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
        _previous = current
        signal.signal(signal.SIGTERM, _on_sigterm)
        _installed = True


def unwatch(writer: _Closable) -> None:
    with _lock:
        _writers.discard(writer)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    previous = _previous
    if callable(previous):
        # The host's or its server's handler (uvicorn, gunicorn) shuts down gracefully and
        # exits normally: the writers' exit hooks flush them after the last request.
        previous(signum, frame)
        return
    if _closed.is_set():
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signum)  # the default action: the process ends by SIGTERM
        return
    global _closer
    if _closer is None:
        # Not in this handler: the signal may have landed in the main thread while it held a
        # writer's lock (in enqueue), which close takes, and the lock is not reentrant.
        _closer = threading.Thread(
            target=_close_then_signal, args=(signum,), name="eventlog-persist-sigterm"
        )
        _closer.start()


def _close_all() -> None:
    for writer in list(_writers):
        try:
            writer._close_at_exit()
        except Exception:  # pragma: no cover - close reports through the hook and the log
            logger.exception("closing a BufferedWriter at the process's end failed")


def _close_then_signal(signum: int) -> None:
    _close_all()
    _closed.set()
    os.kill(os.getpid(), signum)  # to the main thread's handler, which ends the process


def _after_fork_in_child() -> None:
    global _lock, _closer, _closed, _finalizer
    _lock = threading.Lock()  # another thread may have held it at the fork
    _closer, _closed, _finalizer = None, threading.Event(), None
    for writer in list(_forkable):
        writer._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
