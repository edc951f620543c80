"""How a failed write is classified: the SQLSTATE table every writer's retry decision rests on.

A wrong entry here silently changes what happens to events: a transient error classed as a
bad row is dead-lettered at once instead of retried; a bad row classed as transient blocks
a buffered writer's queue with retries. So every class and code is pinned, through each kind
of wrapper a driver or SQLAlchemy puts around the database's error.
"""

from __future__ import annotations

import psycopg
import pytest
from hostmodels import build_host_models
from sqlalchemy.exc import DBAPIError

from eventlog_persist import RetryPolicy
from eventlog_persist._failures import (
    Action,
    Attempt,
    ErrorKind,
    Reason,
    classify_error,
    decide,
    sqlstate_of,
)
from eventlog_persist.exceptions import ConfigurationError, EventWriteError

# One real code of each SQLSTATE class or single code the table names, and what it means.
TABLE = [
    ("08006", ErrorKind.TRANSIENT),  # connection failure
    ("40001", ErrorKind.TRANSIENT),  # serialization failure
    ("40P01", ErrorKind.TRANSIENT),  # deadlock
    ("53300", ErrorKind.TRANSIENT),  # too many connections
    ("53100", ErrorKind.TRANSIENT),  # disk full
    ("57P01", ErrorKind.TRANSIENT),  # admin shutdown
    ("57014", ErrorKind.TRANSIENT),  # statement timeout (split after repeats)
    ("57P03", ErrorKind.TRANSIENT),  # cannot connect now: starting up, shutting down, recovery
    ("25006", ErrorKind.TRANSIENT),  # read-only transaction: a standby, a demoted primary
    ("58030", ErrorKind.TRANSIENT),  # I/O error
    ("55P03", ErrorKind.TRANSIENT),  # lock not available
    ("55006", ErrorKind.TRANSIENT),  # object in use
    ("XX000", ErrorKind.TRANSIENT),  # internal error
    ("22001", ErrorKind.ROW),  # string too long
    ("22P02", ErrorKind.ROW),  # invalid text representation
    ("23503", ErrorKind.ROW),  # foreign key violation
    ("23505", ErrorKind.ROW),  # unique violation of another constraint
    ("54000", ErrorKind.ROW),  # program limit exceeded
    ("42P01", ErrorKind.BATCH),  # undefined table: the setup, not the data
    ("42501", ErrorKind.BATCH),  # insufficient privilege
    ("55000", ErrorKind.BATCH),  # object not in prerequisite state (not 55P03/55006)
    ("25P02", ErrorKind.BATCH),  # in failed transaction: class 25 is not transient, 25006 is
    ("XX001", ErrorKind.BATCH),  # data corrupted (only XX000 is retried)
]


class DriverError(Exception):
    """A driver error as asyncpg (``sqlstate``) or psycopg2 (``pgcode``) shapes it."""

    def __init__(self, code: str, *, attribute: str = "sqlstate", constraint: str | None = None):
        super().__init__(code)
        setattr(self, attribute, code)
        self.constraint_name = constraint


@pytest.mark.parametrize(("code", "kind"), TABLE)
def test_each_sqlstate_means_what_the_table_says_from_psycopg(code: str, kind: ErrorKind) -> None:
    assert classify_error(psycopg.errors.lookup(code)("boom")) is kind


@pytest.mark.parametrize(("code", "kind"), TABLE)
@pytest.mark.parametrize("attribute", ["sqlstate", "pgcode"])
def test_each_sqlstate_means_the_same_through_sqlalchemy_and_other_drivers(
    code: str, kind: ErrorKind, attribute: str
) -> None:
    wrapped = DBAPIError("INSERT ...", {}, DriverError(code, attribute=attribute))
    assert classify_error(wrapped) is kind


def test_a_unique_violation_of_the_primary_key_is_a_duplicate_and_nothing_else_is() -> None:
    on_pk = DBAPIError("COPY", {}, DriverError("23505", constraint="pk_event_logs"))
    elsewhere = DBAPIError("COPY", {}, DriverError("23505", constraint="uq_other"))
    assert classify_error(on_pk) is ErrorKind.DUPLICATE
    assert classify_error(elsewhere) is ErrorKind.ROW
    assert (
        classify_error(DBAPIError("COPY", {}, DriverError("23503", constraint="pk_event_logs")))
        is ErrorKind.ROW
    )


def test_client_side_psycopg_errors_without_a_sqlstate() -> None:
    assert classify_error(psycopg.OperationalError("connection lost")) is ErrorKind.TRANSIENT
    assert classify_error(psycopg.InterfaceError("connection closed")) is ErrorKind.TRANSIENT
    assert classify_error(psycopg.ProgrammingError("bad query")) is ErrorKind.BATCH
    assert classify_error(ValueError("a bug")) is ErrorKind.UNEXPECTED


def test_sqlstate_is_read_through_every_wrapper() -> None:
    driver = psycopg.errors.lookup("23503")("fk")
    assert sqlstate_of(driver) == "23503"
    assert sqlstate_of(DBAPIError("s", {}, DriverError("40001", attribute="pgcode"))) == "40001"
    given = EventWriteError("refused", event=None, sqlstate="22001")
    given.__cause__ = driver
    assert sqlstate_of(given) == "22001"  # the writer's own record wins
    plain = EventWriteError("refused", event=None)
    plain.__cause__ = DBAPIError("s", {}, driver)
    assert sqlstate_of(plain) == "23503"  # else its cause is looked through
    assert sqlstate_of(EventWriteError("closed", event=None)) is None
    assert sqlstate_of(None) is None
    assert sqlstate_of(ValueError("no database here")) is None
    assert sqlstate_of(DBAPIError("s", {}, DriverError("2300"))) is None  # not a SQLSTATE


def chain(depth: int, code: str) -> BaseException:
    """``depth`` wrappers (EventWriteError and DBAPIError, alternating) around a driver error."""
    exc: BaseException = psycopg.errors.lookup(code)("deep")
    for level in range(depth):
        if level % 2:
            exc = DBAPIError("s", {}, exc)  # type: ignore[arg-type]
        else:
            outer = EventWriteError("wrapped", event=None)
            outer.__cause__ = exc
            exc = outer
    return exc


def test_sqlstate_looks_through_seven_wrappers_and_gives_up_after_that() -> None:
    assert sqlstate_of(chain(7, "53300")) == "53300"  # the eighth object is the driver error
    assert sqlstate_of(chain(8, "53300")) is None


def test_a_cycle_of_causes_ends() -> None:
    first = EventWriteError("a", event=None)
    second = EventWriteError("b", event=None)
    first.__cause__, second.__cause__ = second, first
    assert sqlstate_of(first) is None


def timeout_error() -> BaseException:
    return psycopg.errors.lookup("57014")("canceling statement due to statement timeout")


def test_a_batch_is_split_after_the_second_statement_timeout_in_a_row() -> None:
    policy = RetryPolicy(max_attempts=None, max_elapsed=None)
    attempt = Attempt(started=0.0)
    assert decide(attempt, timeout_error(), size=10, policy=policy, now=0).action is Action.RETRY
    # Another error in between starts the count again.
    other = psycopg.errors.lookup("40001")("serialization failure")
    assert decide(attempt, other, size=10, policy=policy, now=0).action is Action.RETRY
    assert decide(attempt, timeout_error(), size=10, policy=policy, now=0).action is Action.RETRY
    assert decide(attempt, timeout_error(), size=10, policy=policy, now=0).action is Action.SPLIT
    single = Attempt(started=0.0)
    assert decide(single, timeout_error(), size=1, policy=policy, now=0).action is Action.RETRY
    last = decide(single, timeout_error(), size=1, policy=policy, now=0)
    assert (last.action, last.reason) == (Action.GIVE_UP, Reason.STATEMENT_TIMEOUT)


def test_unexpected_errors_get_three_attempts_whatever_the_policy() -> None:
    policy = RetryPolicy(max_attempts=None, max_elapsed=None)
    attempt = Attempt(started=0.0)
    actions = [decide(attempt, ValueError("bug"), size=5, policy=policy, now=0) for _ in range(3)]
    assert [d.action for d in actions] == [Action.RETRY, Action.RETRY, Action.GIVE_UP]
    assert actions[-1].reason is Reason.UNEXPECTED


def test_a_lock_wait_ends_a_detached_write_but_is_retried_elsewhere() -> None:
    lock = psycopg.errors.lookup("55P03")("lock timeout")
    policy = RetryPolicy()
    final = decide(
        Attempt(started=0.0), lock, size=1, policy=policy, now=0, lock_wait_is_final=True
    )
    assert (final.action, final.reason) == (Action.GIVE_UP, Reason.LOCK_TIMEOUT)
    assert decide(Attempt(started=0.0), lock, size=1, policy=policy, now=0).action is Action.RETRY


def test_the_default_policies_are_deadlines_in_time() -> None:
    from eventlog_persist import EventWriter

    assert (RetryPolicy().max_attempts, RetryPolicy().max_elapsed) == (None, 30.0)
    assert (RetryPolicy().initial_delay, RetryPolicy().multiplier) == (0.05, 2.0)
    assert RetryPolicy().max_delay == 2.0
    writer = EventWriter(build_host_models().EventLog)
    assert (writer.retry.max_attempts, writer.retry.max_elapsed) == (None, 10.0)


def test_no_wait_reaches_past_the_deadline() -> None:
    policy = RetryPolicy(max_elapsed=30.0, initial_delay=10.0, max_delay=10.0)
    waits = [policy.delay(5, 29.9) for _ in range(200)]
    assert all(wait is not None and 0 <= wait <= 0.1 + 1e-9 for wait in waits)
    assert policy.delay(5, 30.0) is None
    assert policy.delay(5, 31.0) is None
    unlimited = RetryPolicy(max_elapsed=None, max_delay=0.5)
    assert unlimited.delay(10_000, 1e9) is not None


def test_a_retry_budget_rides_out_a_five_second_outage() -> None:
    """Simulated clock: attempts fail for the first 5 s; the defaults still get one after."""
    for policy in (RetryPolicy(), RetryPolicy(max_elapsed=10.0)):
        for _ in range(200):
            now, attempt = 0.0, Attempt(started=0.0)
            while now < 5.0:
                decision = decide(
                    attempt, psycopg.OperationalError("down"), size=1, policy=policy, now=now
                )
                assert decision.action is Action.RETRY
                now += decision.delay + 0.01  # each failed attempt takes a little time


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", -1),
        ("max_attempts", 1.5),
        ("max_attempts", True),
        ("max_attempts", "3"),
        ("max_elapsed", -1),
        ("max_elapsed", float("nan")),
        ("max_elapsed", float("inf")),
        ("max_elapsed", True),
        ("max_elapsed", "30"),
        ("initial_delay", -0.1),
        ("initial_delay", float("nan")),
        ("initial_delay", 86_400.5),
        ("max_delay", -1),
        ("max_delay", float("inf")),
        ("max_delay", 1e12),  # a thread's sleep overflows past 292 years
        ("multiplier", 0.5),
        ("multiplier", float("nan")),
        ("multiplier", True),
    ],
)
def test_a_bad_retry_policy_is_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"RetryPolicy\({field}={value!r}\) is not valid"):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


def test_the_limits_of_a_retry_policy_are_accepted() -> None:
    policy = RetryPolicy(max_attempts=1, max_elapsed=0, initial_delay=0, max_delay=0, multiplier=1)
    assert policy.delay(0, 0.0) is None  # one attempt in all: no retry
    assert RetryPolicy(max_attempts=9, max_elapsed=None, max_delay=0).delay(3, 1e9) == 0
    a_day = RetryPolicy(max_elapsed=None, initial_delay=86_400, max_delay=86_400)
    assert 0 <= (a_day.delay(5, 0.0) or -1) <= 86_400


@pytest.mark.parametrize(
    "waits",
    [
        {"initial_delay": 0},
        {"max_delay": 0},
        {"max_delay": 0.0009},
        {"initial_delay": 1e-300, "max_delay": 1e-300, "multiplier": 1},
        {"initial_delay": 0.0005, "multiplier": 1},
    ],
)
@pytest.mark.parametrize("max_elapsed", [None, 1.0])
def test_waits_that_never_reach_a_millisecond_need_an_attempt_limit(
    waits: dict[str, float], max_elapsed: float | None
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(max_elapsed=max_elapsed, **waits)
    assert str(caught.value).startswith("RetryPolicy(initial_delay=")
    assert str(caught.value).endswith(
        "never waits as long as 0.001 s, so it retries over and over while the database is "
        "down; let the waits grow past that, or set max_attempts"
    )
    assert RetryPolicy(max_attempts=3, max_elapsed=max_elapsed, **waits).max_attempts == 3


def test_waits_that_grow_to_a_millisecond_need_no_attempt_limit() -> None:
    for waits in (
        {"initial_delay": 1e-9},  # grows by the default multiplier to max_delay
        {"initial_delay": 0.001, "max_delay": 0.001, "multiplier": 1},
    ):
        assert RetryPolicy(max_elapsed=None, **waits).max_attempts is None


def test_the_attempt_limit_counts_the_first_attempt() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed=None)
    assert policy.delay(0, 0.0) is not None
    assert policy.delay(1, 0.0) is not None
    assert policy.delay(2, 0.0) is None


def test_the_wait_cap_grows_by_the_multiplier_up_to_max_delay() -> None:
    policy = RetryPolicy(max_elapsed=None, initial_delay=1.0, multiplier=2.0, max_delay=100.0)
    for retry, cap in [(0, 1.0), (3, 8.0), (10, 100.0), (10_000, 100.0)]:
        waits = [policy.delay(retry, 0.0) for _ in range(500)]
        assert all(w is not None and 0 <= w <= cap for w in waits)
        assert max(w for w in waits if w is not None) > cap / 2  # full jitter up to the cap


def test_a_steep_policy_never_overflows() -> None:
    policy = RetryPolicy(max_elapsed=None, initial_delay=1.0, multiplier=1e6, max_delay=3.0)
    for retry in (10, 60, 64, 65, 10_000):
        wait = policy.delay(retry, 0.0)
        assert wait is not None
        assert 0 <= wait <= 3.0


def test_a_read_only_refusal_is_told_apart_through_every_wrapper() -> None:
    from eventlog_persist._failures import is_read_only

    refusal = psycopg.errors.lookup("25006")("cannot execute INSERT in a read-only transaction")
    assert is_read_only(refusal)
    assert is_read_only(DBAPIError("INSERT", {}, refusal))
    assert is_read_only(DriverError("25006"))  # asyncpg's shape
    assert not is_read_only(psycopg.errors.lookup("25P02")("in failed transaction"))
    assert not is_read_only(psycopg.OperationalError("connection lost"))
    assert not is_read_only(ValueError("25006"))
