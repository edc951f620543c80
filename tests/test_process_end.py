"""How a process ends, and what happens to its queued events: SIGTERM with and without a
handler of the host's, a forked child, and an ASGI server's lifespan under a real uvicorn.

Each test runs a real process and counts the rows it left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, create_partitions, seed
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from waiting import wait_for, waits_for_a_lock

from eventlog_persist import BufferedWriter, Spool, new_event_id

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

TESTS = Path(__file__).parent


def stored(engine: Engine) -> dict[str, int]:
    """Distinct stored ids per event type."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_type, count(DISTINCT id), count(*) FROM event_logs GROUP BY 1")
        ).all()
    assert all(distinct == total for _, distinct, total in rows), "an event stored twice"
    return {kind: distinct for kind, distinct, _ in rows}


def conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def start(script: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(script)],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for_line(process: subprocess.Popen[str], expected: str) -> None:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != expected:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"expected {expected!r}, got {line!r}; stderr:\n{err}")


def host_script(user_id: Any, session_id: Any, body: str, *, partitioned: bool = False) -> str:
    """A host's script: ``body`` runs once it has built ``models`` and the seeded ``keys``."""
    keys = f"session_id=uuid.UUID({str(session_id)!r}), user_id=uuid.UUID({str(user_id)!r})"
    return (
        "import os, sys, time, uuid\n"
        "from hostmodels import build_host_models\n"
        "from eventlog_persist import BufferedWriter, Spool\n"
        f"models = build_host_models(partitioned={partitioned})\n"
        f"keys = dict({keys})\n" + textwrap.dedent(body)
    )


def run_host_script(user_id: Any, session_id: Any, body: str) -> list[str]:
    """Run `host_script` (warnings as errors); it must exit 0. Returns its printed words."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", host_script(user_id, session_id, body)],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def queue_then_wait(
    url: URL,
    user_id: Any,
    session_id: Any,
    setup: str = "",
    then: str = 'print("queued", flush=True)',
    **options: Any,
) -> str:
    """A process that queues 999 events, runs ``then``, and sleeps: fewer events than the
    1,000 at which a writer starts a batch, so they are written only when it closes."""
    extra = "".join(f", {name}={value!r}" for name, value in options.items())
    return f"""
        import time, uuid
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter
        SESSION, USER = {str(session_id)!r}, {str(user_id)!r}
        {setup}
        models = build_host_models()
        writer = BufferedWriter(models.EventLog, {conninfo(url)!r}, flush_interval=600{extra})
        writer.start()
        for i in range(999):
            writer.enqueue(session_id=uuid.UUID({str(session_id)!r}),
                           user_id=uuid.UUID({str(user_id)!r}), event_type="queued")
        {then}
        time.sleep(60)
    """


def test_sigterm_writes_the_queue_then_ends_the_process_as_sigterm_does(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    process = start(queue_then_wait(database_url, user_id, session_id))
    wait_for_line(process, "queued")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM, err  # the signal's normal effect
    assert stored(host_engine) == {"queued": 999}


def test_sigterm_landing_while_enqueue_holds_the_writers_lock_writes_the_queue(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    # Python runs a signal handler in the main thread between two bytecodes, which may be
    # inside enqueue's locked section; close() takes the same lock. The signal is sent here
    # while the main thread holds the lock, to make that moment certain.
    user_id, session_id = seed(host_engine, host_models)
    held = """
        import os, signal
        signal.alarm(30)  # a deadlock: SIGALRM ends the process, and the test fails
        with writer._lock:
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(100_000))  # the handler runs here, the lock held
    """
    process = start(queue_then_wait(database_url, user_id, session_id, then=held.strip()))
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM, err
    assert stored(host_engine) == {"queued": 999}


def test_a_second_sigterm_while_the_writers_close_ends_the_process_at_once() -> None:
    down = "host=/nonexistent-eventlog-dir port=1 dbname=x"  # close waits its exit_timeout
    process = start(
        f"""
        import time, uuid
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter
        writer = BufferedWriter(build_host_models().EventLog, {down!r}, exit_timeout=30)
        writer.start()
        for _ in range(10):
            writer.enqueue(session_id=uuid.uuid4(), user_id=uuid.uuid4(), event_type="x")
        print("queued", flush=True)
        time.sleep(60)
        """
    )
    wait_for_line(process, "queued")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None  # closing, for up to exit_timeout
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=20)
    finally:
        process.kill()  # if it is still closing
    assert process.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 5


def test_a_process_the_re_raised_sigterm_does_not_end_exits_with_143(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    # As PID 1 of a container, which takes no signal it has no handler for; here the main
    # thread blocks SIGTERM, so the handler's own raise of it stays pending.
    user_id, session_id = seed(host_engine, host_models)
    blocked = """
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the main thread only
        signal.alarm(30)  # never ended: SIGALRM ends the process, and the test fails
        print("queued", flush=True)
        for _ in range(600):  # the handler runs between these (no signal wakes this thread)
            time.sleep(0.05)
    """
    process = start(queue_then_wait(database_url, user_id, session_id, then=blocked.strip()))
    wait_for_line(process, "queued")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert stored(host_engine) == {"queued": 999}


def test_a_forked_child_closes_its_own_writer_on_sigterm(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    script = f"""
        import signal, threading
        writer = BufferedWriter(models.EventLog, {conninfo(database_url)!r}, flush_interval=600)
        writer.start()
        BufferedWriter(models.EventLog, {conninfo(database_url)!r}).start().close()
        closers = [t for t in threading.enumerate() if t.name == "eventlog-persist-sigterm"]
        ready, told = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # not closed: SIGALRM ends the child, and the test fails
            for _ in range(10):
                writer.enqueue(event_type="child", **keys)
            os.write(told, b"x")
            time.sleep(30)
            os._exit(0)
        os.read(ready, 1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        print(len(closers), os.waitstatus_to_exitcode(status), writer.close(timeout=30).written)
    """
    # One closer for both writers; the child's queue written, the child ended by SIGTERM.
    assert run_host_script(user_id, session_id, script) == ["1", "-15", "0"]
    assert stored(host_engine) == {"child": 10}


def test_sigterm_goes_to_the_hosts_own_handler_and_the_exit_hook_writes_the_queue(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    setup = """
        import signal, sys, uuid
        def graceful(signum, frame):
            # A server's graceful shutdown: the requests still running may log events.
            print("host handler", flush=True)
            writer.enqueue(session_id=uuid.UUID(SESSION), user_id=uuid.UUID(USER),
                           event_type="during-shutdown")
            sys.exit(3)
        signal.signal(signal.SIGTERM, graceful)
    """
    process = start(queue_then_wait(database_url, user_id, session_id, setup=setup.strip()))
    wait_for_line(process, "queued")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    assert out.strip() == "host handler"
    assert stored(host_engine) == {"queued": 999, "during-shutdown": 1}


def test_without_the_handler_sigterm_kills_the_queue(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    process = start(queue_then_wait(database_url, user_id, session_id, handle_sigterm=False))
    wait_for_line(process, "queued")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM
    assert stored(host_engine) == {}  # what the handler is for


def test_sigterm_with_two_writers_writes_both_queues(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    setup = f"""
        models0 = build_host_models()
        other = BufferedWriter(models0.EventLog, {conninfo(database_url)!r}, flush_interval=600)
        other.start()
        for _ in range(500):
            other.enqueue(session_id=uuid.UUID(SESSION), user_id=uuid.UUID(USER),
                          event_type="other")
    """
    process = start(queue_then_wait(database_url, user_id, session_id, setup=setup.strip()))
    wait_for_line(process, "queued")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM, err
    assert stored(host_engine) == {"queued": 999, "other": 500}


@pytest.mark.parametrize("end", ["SIGTERM", "exit"])
def test_writers_close_together_within_the_longest_exit_timeout(end: str) -> None:
    """Three writers whose database is down: the process ends after about one exit_timeout
    (3 s), not after the three of them one by one (9 s)."""
    down = "host=/nonexistent-eventlog-dir port=1 dbname=x"
    ending = "time.sleep(60)" if end == "SIGTERM" else "sys.exit(0)"
    process = start(
        f"""
        import sys, time, uuid
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter
        models = build_host_models()
        writers = [
            BufferedWriter(models.EventLog, {down!r}, exit_timeout=3.0).start()
            for _ in range(3)
        ]
        for writer in writers:
            writer.enqueue(session_id=uuid.uuid4(), user_id=uuid.uuid4(), event_type="x")
        print("queued", flush=True)
        {ending}
        """
    )
    wait_for_line(process, "queued")
    began = time.monotonic()
    if end == "SIGTERM":
        process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    took = time.monotonic() - began
    assert process.returncode == (-signal.SIGTERM if end == "SIGTERM" else 0), err
    assert err.count("may not have been written: the writer closed") == 3, err
    assert 2.9 < took < 7.0, f"{took:.1f} s"


def test_writers_at_exit_write_their_queues_at_the_same_time(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    """Each write takes 1.5 s here (a host trigger) and exit_timeout is 2.5 s: one writer
    after the other, the second would have 1 s left; together both are written."""
    user_id, session_id = seed(host_engine, host_models)
    with host_engine.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$"
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER slow BEFORE INSERT ON event_logs "
                "FOR EACH STATEMENT EXECUTE FUNCTION slow()"
            )
        )
    keys = f"session_id=uuid.UUID({str(session_id)!r}), user_id=uuid.UUID({str(user_id)!r})"
    process = start(
        f"""
        import uuid
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter
        models = build_host_models()
        for kind in ("first", "second"):
            writer = BufferedWriter(
                models.EventLog, {conninfo(database_url)!r}, flush_interval=600,
                exit_timeout=2.5,
            ).start()
            writer.enqueue({keys}, event_type=kind)
        """
    )
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert stored(host_engine) == {"first": 1, "second": 1}, err


def test_a_host_exit_hook_registered_after_the_first_writer_still_writes_through_it(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    """The writers' exit hook sits where the first writer registered it: the host's hooks
    registered later run before it, even when another writer starts after them."""
    user_id, session_id = seed(host_engine, host_models)
    keys = f"session_id=uuid.UUID({str(session_id)!r}), user_id=uuid.UUID({str(user_id)!r})"
    process = start(
        f"""
        import atexit, uuid
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter
        models = build_host_models()
        events = BufferedWriter(models.EventLog, {conninfo(database_url)!r}).start()
        atexit.register(lambda: events.enqueue({keys}, event_type="goodbye"))
        audit = BufferedWriter(models.EventLog, {conninfo(database_url)!r}).start()
        """
    )
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert stored(host_engine) == {"goodbye": 1}


def test_an_ignored_sigterm_stays_ignored(database_url: URL, host_models: HostModels) -> None:
    script = f"""
        import signal
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        writer = BufferedWriter(build_host_models().EventLog, {conninfo(database_url)!r}).start()
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
        writer.close()
    """
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(script)],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr


def test_a_writer_started_in_another_thread_works_and_says_sigterm_will_not_flush_it(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    script = f"""
        import signal, threading, uuid
        from hostmodels import build_host_models
        from eventlog_persist import BufferedWriter
        writer = BufferedWriter(build_host_models().EventLog, {conninfo(database_url)!r})
        thread = threading.Thread(target=writer.start)
        thread.start()
        thread.join()
        writer.enqueue(session_id=uuid.UUID({str(session_id)!r}),
                       user_id=uuid.UUID({str(user_id)!r}), event_type="threaded")
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, writer.close().written)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.split()) == (0, ["True", "1"]), done.stderr
    assert "started outside the main thread" in done.stderr
    assert "SIGTERM will not flush it" in done.stderr
    assert stored(host_engine) == {"threaded": 1}


def test_a_forked_child_writes_through_its_own_connection_and_thread(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    script = f"""
        from eventlog_persist.exceptions import WriterClosedError
        writer = BufferedWriter(models.EventLog, {conninfo(database_url)!r}, flush_interval=0.01)
        writer.start()
        for _ in range(100):
            writer.enqueue(event_type="parent", **keys)
        assert writer.flush(timeout=30)
        for _ in range(50):  # queued in the parent at the fork: the parent's to write
            writer.enqueue(event_type="at-fork", **keys)
        pid = os.fork()
        if pid == 0:
            flushed = writer.flush(timeout=30)  # before any enqueue: restarts the writer too
            for _ in range(70):
                writer.enqueue(event_type="child", **keys)
            counters = writer.close(timeout=30)
            try:
                writer.enqueue(event_type="child", **keys)
                refused = False
            except WriterClosedError as error:  # enqueue's own refusal, carrying the event
                refused = error.event is not None
            ok = flushed and refused and (counters.written, counters.retried) == (70, 0)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        for _ in range(30):
            writer.enqueue(event_type="parent", **keys)
        counters = writer.close(timeout=30)
        print(os.waitstatus_to_exitcode(status), counters.written, counters.retried, flush=True)
    """
    # The child exited 0, and the parent's connection survived the child: no retry.
    assert run_host_script(user_id, session_id, script) == ["0", "180", "0"]
    assert stored(host_engine) == {"parent": 130, "at-fork": 50, "child": 70}


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_multiprocessing_child_writes_its_queue_when_it_ends(
    host_engine: Engine, host_models: HostModels, database_url: URL, method: str, tmp_path: Path
) -> None:
    # Such a child ends with os._exit, which runs no atexit hook.
    user_id, session_id = seed(host_engine, host_models)
    script = f"""
        import multiprocessing

        def work(url, keys):
            writer = BufferedWriter(build_host_models().EventLog, url, flush_interval=600)
            writer.start()
            for _ in range(100):
                writer.enqueue(event_type="child", **keys)

        if __name__ == "__main__":
            child = multiprocessing.get_context({method!r}).Process(
                target=work, args=({conninfo(database_url)!r}, keys)
            )
            child.start()
            child.join(60)
            print(child.exitcode, flush=True)
    """
    path = tmp_path / "host.py"  # the child's __main__ must be a file (forkserver)
    path.write_text(host_script(user_id, session_id, script))
    done = subprocess.run(
        [sys.executable, "-W", "error", str(path)],
        cwd=TESTS,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert (done.returncode, done.stdout.split()) == (0, ["0"]), done.stderr
    assert stored(host_engine) == {"child": 100}


def test_a_forked_child_of_a_writer_given_a_connection_dead_letters_with_the_fix_named(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    # The connection is the parent's: the child cannot use it, and retrying cannot help.
    user_id, session_id = seed(host_engine, host_models)
    script = f"""
        import psycopg, signal
        errors = []
        connection = psycopg.connect({conninfo(database_url)!r}, autocommit=True)
        writer = BufferedWriter(models.EventLog, connection, flush_interval=0.01,
                                on_dead_letter=lambda event, error: errors.append(error))
        writer.start()
        writer.enqueue(event_type="parent", **keys)
        assert writer.flush(timeout=30)
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # retried forever: SIGALRM ends the child, and the test fails
            writer.enqueue(event_type="child", **keys)
            counters = writer.close(timeout=30)
            message = str(errors[0].__cause__) if errors else ""
            ok = counters.dead_lettered == 1 and "belongs to the parent process" in message
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), writer.close(timeout=30).written, flush=True)
    """
    assert run_host_script(user_id, session_id, script) == ["0", "1"]
    assert stored(host_engine) == {"parent": 1}


def test_a_child_forked_while_the_writer_held_its_lock_is_not_locked_out(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    """A fork copies a lock as it is: held, by a thread the child does not have. The
    writer's thread takes its lock for moments; a fork in such a moment (a pre-fork server
    forking its workers while the writer works) must leave the child a lock of its own.
    The lock is held here by a thread of the test, to make that moment certain."""
    user_id, session_id = seed(host_engine, host_models)
    script = f"""
        import signal, threading
        writer = BufferedWriter(models.EventLog, {conninfo(database_url)!r}, flush_interval=0.01)
        writer.start()
        writer.enqueue(event_type="parent", **keys)
        assert writer.flush(timeout=30)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with writer._lock:
                held.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # locked out: SIGALRM ends the child, and the test fails
            writer.enqueue(event_type="child", **keys)
            counters = writer.close(timeout=30)
            os._exit(0 if counters.written == 1 else 1)
        release.set()
        holder.join()
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), writer.close(timeout=30).written, flush=True)
    """
    assert run_host_script(user_id, session_id, script) == ["0", "1"]
    assert stored(host_engine) == {"parent": 1, "child": 1}


def test_a_child_of_a_parent_that_never_started_its_writer_starts_it_itself(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    """Only a writer the parent had running restarts in the child: one the parent never
    started waits for the child's start(), as it would have in the parent."""
    user_id, session_id = seed(host_engine, host_models)
    script = f"""
        from eventlog_persist.exceptions import WriterNotStartedError
        writer = BufferedWriter(models.EventLog, {conninfo(database_url)!r}, flush_interval=0.01)
        pid = os.fork()
        if pid == 0:
            writer.enqueue(event_type="child", **keys)
            try:
                writer.flush(timeout=5)
                os._exit(1)  # it started on its own
            except WriterNotStartedError:
                pass
            writer.start()
            os._exit(0 if writer.close(timeout=30).written == 1 else 2)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
    """
    assert run_host_script(user_id, session_id, script) == ["0"]
    assert stored(host_engine) == {"child": 1}


def test_an_async_writer_in_a_forked_child_has_its_own_lock_and_none_of_the_parents_events(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    """The async writer's lock guards its counters for other threads (a metrics scrape):
    a fork while such a thread holds it must leave the child a lock of its own, and the
    events the parent had queued are the parent's to write."""
    user_id, session_id = seed(host_engine, host_models)
    script = f"""
        import asyncio, signal, threading
        from eventlog_persist import AsyncBufferedWriter
        writer = AsyncBufferedWriter(models.EventLog, {conninfo(database_url)!r})

        async def queue() -> None:
            for _ in range(3):
                await writer.enqueue(event_type="parent", **keys)

        async def write_one_and_close() -> int:
            await writer.start()
            await writer.enqueue(event_type="child", **keys)
            return (await writer.close(timeout=30)).written

        async def write_and_close() -> int:
            await writer.start()
            return (await writer.close(timeout=30)).written

        asyncio.run(queue())  # queued, not started
        held, release = threading.Event(), threading.Event()

        def scrape() -> None:
            with writer._lock:  # as reading counters from another thread does, for a moment
                held.set()
                release.wait()

        scraper = threading.Thread(target=scrape)
        scraper.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # locked out: SIGALRM ends the child, and the test fails
            os._exit(0 if asyncio.run(write_one_and_close()) == 1 else 1)
        release.set()
        scraper.join()
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), asyncio.run(write_and_close()), flush=True)
    """
    assert run_host_script(user_id, session_id, script) == ["0", "3"]
    assert stored(host_engine) == {"parent": 3, "child": 1}


FORK_STATE = """
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta
    import psycopg
    from eventlog_persist import WriterCounters

    spool = Spool(SPOOL) if SPOOL else None
    writer = BufferedWriter(models.EventLog, TARGET, flush_interval=0.01, batch_size=50,
                            max_queued=60, when_full="drop_newest", spool=spool,
                            on_dead_letter=lambda event, error: None)
    writer.start()
    twice = writer.enqueue(event_type="parent", **keys)
    for _ in range(49):
        writer.enqueue(event_type="parent", **keys)
    assert writer.flush(timeout=30)
    writer.enqueue(twice)  # already stored: a duplicate
    writer.enqueue(event_type="refused", session_id=uuid.uuid4(), user_id=keys["user_id"])
    assert writer.flush(timeout=30)
    with psycopg.connect(TARGET, autocommit=True) as admin:  # a read-only spell: retried
        database = f'DATABASE "{admin.info.dbname}"'
        admin.execute(f"ALTER {database} SET default_transaction_read_only = on")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        writer.enqueue(event_type="parent", **keys)
        while writer.counters.read_only_retries == 0:
            time.sleep(0.01)
        admin.execute(f"ALTER {database} RESET default_transaction_read_only")
    assert writer.flush(timeout=30)
    before = writer.counters.retried + writer.counters.dead_lettered
    writer.enqueue(event_type="backfill", created_at=datetime.now(UTC) - timedelta(days=400),
                   **keys)  # no partition: held, or given up at once with a spool
    while writer.counters.retried + writer.counters.dead_lettered == before:
        time.sleep(0.01)
    print("ready", flush=True)
    sys.stdin.readline()  # the test locks event_logs
    for _ in range(50):  # one batch: it waits for the lock
        writer.enqueue(event_type="at-fork", **keys)
    print("writing", flush=True)
    sys.stdin.readline()  # the test saw the batch wait
    while writer.counters.queued < 60:  # fill the queue
        writer.enqueue(event_type="queued", **keys)
    writer.enqueue(event_type="over", **keys)  # dropped, or spilled
    pid = os.fork()
    if pid == 0:
        stats = writer.stats
        fresh = (stats.counters, stats.oldest_queued_age, stats.batches, stats.last_error)
        for _ in range(50):
            writer.enqueue(event_type="child", **keys)
        flushed = writer.flush(timeout=30)
        counters = writer.close(timeout=30)
        zero = WriterCounters(*(0,) * 10)
        if (fresh, flushed, counters) != ((zero, None, 0, None), True, replace(zero, written=50)):
            print(fresh, flushed, counters, file=sys.stderr, flush=True)
            os._exit(1)
        os._exit(0)
    print("forked", flush=True)
    _, status = os.waitpid(pid, 0)
    counters = writer.close(timeout=30)
    print(os.waitstatus_to_exitcode(status), counters.written, counters.duplicates,
          counters.dead_lettered, counters.dropped, counters.spilled, flush=True)
"""


@pytest.mark.parametrize("spooled", [False, True], ids=["memory", "spool"])
def test_a_forked_child_starts_with_none_of_the_parents_events_errors_or_counters(
    engine: Engine, database_url: URL, tmp_path: Path, spooled: bool
) -> None:
    models = build_host_models(partitioned=True)
    models.Base.metadata.create_all(engine)
    create_partitions(engine, catch_all=False)
    user_id, session_id = seed(engine, models)
    # At the fork the parent has written, met a duplicate and a read-only spell, given up on a
    # refused event, holds one without a partition (not with a spool: given up), writes a
    # batch, queues behind it and dropped (or spilled) one.
    process = start(
        f"TARGET, SPOOL = {conninfo(database_url)!r}, {str(tmp_path) if spooled else ''!r}\n"
        + host_script(user_id, session_id, FORK_STATE, partitioned=True),
        stdin=subprocess.PIPE,
    )
    assert process.stdin is not None
    wait_for_line(process, "ready")
    engine.dispose()  # the read-only spell ended the pool's connections
    with engine.connect() as conn:
        conn.execute(text("LOCK TABLE event_logs IN ACCESS EXCLUSIVE MODE"))
        process.stdin.write("locked\n")
        process.stdin.flush()
        wait_for_line(process, "writing")
        wait_for(lambda: waits_for_a_lock(engine), 30, "the batch's write")
        process.stdin.write("waiting\n")
        process.stdin.flush()
        wait_for_line(process, "forked")
        conn.rollback()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    # The child exited 0; the parent wrote its own, gave up on the refused and held events.
    assert out.split() == [
        "0",
        "113" if spooled else "111",
        "1",
        "2",
        "0" if spooled else "1",
        "0",
    ], err
    assert stored(engine) == {
        "parent": 51,
        "at-fork": 50,
        "queued": 10 if spooled else 9,
        "child": 50,
        **({"over": 1} if spooled else {}),
    }


def test_a_forked_child_leaves_the_parents_spool_to_be_replayed_once_the_parent_is_gone(
    host_engine: Engine, host_models: HostModels, tmp_path: Path
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    # The database is down: the parent's five events stay on its spool when it closes.
    script = f"""
        writer = BufferedWriter(models.EventLog, "host=/nonexistent-eventlog-dir port=1 dbname=x",
                                flush_interval=0.01, spool=Spool({str(tmp_path)!r})).start()
        for _ in range(5):
            writer.enqueue(event_type="spooled", **keys)
        if os.fork() == 0:
            sys.stdin.readline()  # the child lives on until the test is done
            os._exit(0)
        print(writer.close(timeout=0.2).spilled, flush=True)
    """
    process = start(host_script(user_id, session_id, script), stdin=subprocess.PIPE)
    try:
        wait_for_line(process, "5")
        process.wait(timeout=30)
        # The child still runs: the parent's spool is an orphan all the same.
        with BufferedWriter(host_models.EventLog, host_engine, spool=Spool(tmp_path)) as writer:
            assert writer.flush(timeout=30)
            assert writer.counters.replayed == 5
    finally:
        process.communicate("done\n", timeout=30)  # the child ends
    assert stored(host_engine) == {"spooled": 5}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_uvicorn_on_sigterm_runs_the_lifespan_shutdown_that_flushes_both_writers(
    host_engine: Engine, host_models: HostModels, database_url: URL, tmp_path: Path
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    app = tmp_path / "asgi_host.py"
    app.write_text(
        textwrap.dedent(
            f"""
            import asyncio, contextlib, uuid
            from hostmodels import build_host_models
            from eventlog_persist import AsyncBufferedWriter, BufferedWriter

            models = build_host_models()
            KEYS = dict(session_id=uuid.UUID({str(session_id)!r}),
                        user_id=uuid.UUID({str(user_id)!r}))
            TARGET = {conninfo(database_url)!r}
            # Started at import, before uvicorn installs its signal handlers.
            threaded = BufferedWriter(models.EventLog, TARGET, flush_interval=600).start()

            async def app(scope, receive, send):
                assert scope["type"] == "lifespan"
                message = await receive()  # startup
                queued = AsyncBufferedWriter(models.EventLog, TARGET, flush_interval=600)
                await queued.start()
                for _ in range(2000):
                    await queued.enqueue(event_type="async", **KEYS)
                    threaded.enqueue(event_type="thread", **KEYS)
                await send({{"type": "lifespan.startup.complete"}})
                print("queued", flush=True)
                message = await receive()  # shutdown, on SIGTERM
                await queued.close()
                await send({{"type": "lifespan.shutdown.complete"}})
            """
        )
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "asgi_host:app",
            "--port",
            str(free_port()),
            "--lifespan",
            "on",
            "--app-dir",
            str(tmp_path),
        ],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_line(process, "queued")
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert "Application shutdown complete" in err
    # The async writer flushed in the lifespan shutdown; the thread writer when uvicorn,
    # done, gave the signal back to the handler it had found: the package's.
    assert process.returncode == -signal.SIGTERM
    assert stored(host_engine) == {"async": 2000, "thread": 2000}


def test_forked_children_mint_different_ids_for_the_same_instant() -> None:
    """An id for a given ``created_at`` takes its tail from a per-process counter: each child
    starts its own, or two workers forked from one parent store the same id for two events
    of the same millisecond (one of them lost to ON CONFLICT DO NOTHING)."""
    at = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    new_event_id(at)  # the parent's counter is in use before the fork
    ids = set()
    for _ in range(2):
        ready, told = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(told, new_event_id(at).bytes)
            os._exit(0)
        os.close(told)
        ids.add(os.read(ready, 16))
        os.close(ready)
        os.waitpid(pid, 0)
    ids.add(new_event_id(at).bytes)
    assert len(ids) == 3
