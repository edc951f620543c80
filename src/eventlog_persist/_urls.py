"""Where the package's own psycopg connections go: any PostgreSQL URL, conninfo or engine,
turned into libpq parameters, with other drivers' URL parameters translated or dropped."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine

from eventlog_persist.exceptions import ConfigurationError

EXAMPLE: Final = "postgresql://user:password@host:5432/dbname"
"""How a URL looks, for the fixes that error messages name."""

TWINS: Final = {
    "write_events": "awrite_events",
    "BufferedWriter": "AsyncBufferedWriter",
    "record_detached": "arecord_detached",
    "EventLogReader": "AsyncEventLogReader",
    "EventFeed": "AsyncEventFeed",
    "EventTail": "AsyncEventTail",
    "feed_status": "afeed_status",
    "AuditSealer": "AsyncAuditSealer",
}
"""Each sync entry point and its async twin."""

_TAKE_URLS: Final = frozenset(
    {"write_events", "awrite_events", "BufferedWriter", "AsyncBufferedWriter"}
)

# Values hidden in messages: password, sslpassword, oauth_client_secret, scram_*_key, and
# misspellings such as passwd or pwd.
_SECRET_PARAM = re.compile(
    r"\b(\w*(?:pass|pwd|secret|_key)\w*)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE
)
# A password runs to the last "@" (a space, "/" or "@" in it unencoded included): hiding
# too much is harmless, showing a piece of it is not.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:).*@", re.DOTALL)
_NAMES_AN_OPTION = re.compile(r'invalid (?:connection|URI query) (?:option|parameter) "\w+"\s*$')
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+._\-]*)://")  # postgresql+psycopg_async too
_HOST_PORT = re.compile(r"^([A-Za-z0-9\-.]*):(\d+)$")
_POSTGRESQL: Final = frozenset({"postgresql", "postgres"})
_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})

# URL query parameters of other drivers (and of SQLAlchemy itself) that only tune that
# driver's own client; the package's psycopg connections have no use for them.
DROPPED: Final = {
    "async_fallback": "SQLAlchemy",
    "plugin": "SQLAlchemy",
    "prepared_statement_cache_size": "SQLAlchemy's asyncpg dialect",
    "prepared_statement_name_func": "SQLAlchemy's asyncpg dialect",
    "statement_cache_size": "asyncpg",
    "max_cached_statement_lifetime": "asyncpg",
    "max_cacheable_statement_size": "asyncpg",
    "command_timeout": "asyncpg",
    "prepare_threshold": "psycopg",
}


def shown(value: object) -> str:
    """``value`` as an error message may show it: passwords and other secrets hidden."""
    if isinstance(value, URL):
        text = value.render_as_string(hide_password=True)
    elif isinstance(value, (Engine, AsyncEngine)):
        text = f"{type(value).__name__}({value.url.render_as_string(hide_password=True)})"
    else:
        text = value if isinstance(value, str) else repr(value)
    return _URL_PASSWORD.sub(r"\1***@", _SECRET_PARAM.sub(r"\1\2***", text))


def conninfo(target: object) -> str:
    """Return the libpq conninfo psycopg connects with for ``target``.

    ``target`` is a libpq conninfo, a ``postgresql://`` URL, a SQLAlchemy URL (string or
    `URL`) of any PostgreSQL driver, or an engine, whose URL is used (not its
    ``connect_args``). Query parameters of other drivers are translated to libpq's, or
    dropped when they only tune that driver; the named driver itself is never loaded.

    Raises:
        ConfigurationError: Not a PostgreSQL database, not parsable, or a parameter has no
            libpq equivalent. The message shows the value with its password hidden.
    """
    params = libpq_params(target)
    ports = params.get("port", "").split(",")
    if not all(port.isdigit() or not port for port in ports):  # else libpq says so at connect
        url = shown(target)
        # An unencoded "/" in a URL's password makes libpq read a piece of it as the port:
        # named only where no password can be, a conninfo or a URL without "@".
        port = "" if "://" in url and "@" in url else repr(params["port"]) + " "
        raise ConfigurationError(
            f"{url!r} has a port {port}that is not a number; write it as {EXAMPLE}, and "
            "percent-encode any '/', ':', '@' or space in the password "
            "(urllib.parse.quote(password, safe=''))"
        )
    try:
        return make_conninfo("", **params)
    except psycopg.ProgrammingError as exc:
        raise _unusable(target, exc) from None


def libpq_params(target: object) -> dict[str, str]:
    """The libpq parameters of ``target``, as `conninfo` describes."""
    if isinstance(target, (Engine, AsyncEngine)):
        return _url_params(target.url, target)
    if isinstance(target, URL):
        return _url_params(target, target)
    if not isinstance(target, str):
        raise ConfigurationError(
            f"{shown(target)} is not a database URL or conninfo; pass a string such as "
            f"{EXAMPLE}, a sqlalchemy URL, or an engine"
        )
    if not target.strip():
        # libpq would read it as "all defaults" and connect wherever PGHOST or the local
        # socket points: a cron line's --url "$DATABASE_URL" with the variable unset.
        raise ConfigurationError(
            f"the database URL is empty ({target!r}; is DATABASE_URL unset?); write it as "
            f"{EXAMPLE} or as a libpq conninfo such as 'host=db dbname=app user=app'"
        )
    match = _SCHEME.match(target)
    if match is None:
        return _libpq_params(target)
    backend, _, driver = match[1].lower().partition("+")
    if backend not in _POSTGRESQL:
        raise not_postgresql(target)
    try:
        url = make_url(target)
    except (ArgumentError, ValueError) as exc:
        if not driver:  # libpq's own forms, such as several hosts: postgresql://h1,h2/db
            return _libpq_params(target)
        raise ConfigurationError(
            f"{shown(target)!r} is not a valid database URL ({shown(str(exc))}); write it as "
            f"{EXAMPLE}"
        ) from None
    if not driver and url.host and ("%" in url.host or "," in url.host):
        # SQLAlchemy reads the rest as the host's own engine does, but keeps a percent-encoded
        # socket folder encoded (postgresql://app@%2Fvar%2Frun%2Fpostgresql/app) and gives a
        # list of hosts one port (h1,h2:5433); libpq reads its own URI right.
        try:
            return _libpq_params(target)
        except ConfigurationError:
            pass  # another driver's query parameter (ssl=require): SQLAlchemy's reading
    return _url_params(url, target)


def not_postgresql(target: object) -> ConfigurationError:
    """The one-line refusal of a database that is not PostgreSQL."""
    return ConfigurationError(
        f"{shown(target)!r} is not a PostgreSQL database, the only one eventlog-persist "
        f"supports; write it as {EXAMPLE} (any PostgreSQL driver, or a libpq conninfo)"
    )


def _unusable(target: object, exc: Exception) -> ConfigurationError:
    text, said = str(target), str(exc)
    secret = _SECRET_PARAM.search(text)
    if secret:
        # Unparsable, a password may run past where the pattern stops (a space, a quote
        # left open): nothing after its keyword is shown.
        text = text[: secret.start(3)] + "***..."
    if ("://" in text or secret) and not _NAMES_AN_OPTION.match(said):
        # libpq's reason quotes the text where it stopped, which may be inside a password.
        reason = "libpq cannot parse it"
    else:
        reason = " ".join(shown(said).split())
    return ConfigurationError(
        f"{shown(text)!r} is not a usable PostgreSQL conninfo or URL ({reason}); write it "
        f"as {EXAMPLE} or as a libpq conninfo such as 'host=db dbname=app user=app'"
    )


def _libpq_params(text: str) -> dict[str, str]:
    try:
        parsed = conninfo_to_dict(text)
    except psycopg.ProgrammingError as exc:
        raise _unusable(text, exc) from None
    params = {key: str(value) for key, value in parsed.items()}
    if "sslmode" in params:  # a spelling of asyncpg's (verify_full) in a libpq conninfo
        try:
            params.update(_sslmode(params["sslmode"]))
        except ValueError as exc:
            raise ConfigurationError(
                f"{shown(text)!r} has sslmode={params['sslmode']!r}, which {exc}"
            ) from None
    return params


def _url_params(url: URL, given: object) -> dict[str, str]:
    backend = url.get_backend_name()
    if backend not in _POSTGRESQL:
        raise not_postgresql(given)
    parts = {
        "user": url.username,
        "password": url.password,
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
    }
    params = {key: str(part) for key, part in parts.items() if part is not None and part != ""}
    query = dict(url.query)
    hosts = query.pop("host", None)
    if hosts is not None:
        _hosts(hosts, "port" in query, params)
    for key, value in query.items():
        if not isinstance(value, str):
            raise ConfigurationError(
                f"{shown(given)!r} gives the parameter {key} {len(value)} times; give it once"
            )
        _translate(key, value, params, given)
    return params


def _hosts(value: str | tuple[str, ...], has_port: bool, params: dict[str, str]) -> None:
    """``host=`` in a SQLAlchemy URL: ``h1,h2`` as libpq, or ``h1:p1`` (repeatable)."""
    tokens = (value,) if isinstance(value, str) else value
    if has_port or (isinstance(value, str) and "," in value):
        params["host"] = ",".join(tokens)
        return
    hosts, ports = [], []
    for token in tokens:
        match = _HOST_PORT.match(token)
        hosts.append(match[1] if match else token)
        ports.append(match[2] if match else "")
    params["host"] = ",".join(hosts)
    if any(ports):
        params["port"] = ",".join(ports)


def _translate(key: str, value: str, params: dict[str, str], given: object) -> None:
    rule = _RULES.get(key)
    if rule is not None:
        try:
            params.update(rule(value))
        except ValueError as exc:
            raise ConfigurationError(
                f"{shown(given)!r} has {key}={shown(value)!r}, which {exc}"
            ) from None
    elif key in DROPPED:
        return
    elif key in _libpq_keywords():
        params[key] = value
    else:
        raise ConfigurationError(
            f"{shown(given)!r} has the parameter {key}, which libpq does not know and "
            "eventlog-persist cannot translate; remove it from the URL (server settings go "
            "in options=-c name=value)"
        )


# -- translations: each returns libpq parameters, or raises ValueError saying what to use -----


def _sslmode(value: str) -> dict[str, str]:
    mode = value.strip().lower().replace("_", "-")
    if mode not in _SSLMODES:
        raise ValueError(f"is not an SSL mode; use one of {', '.join(_SSLMODES)}")
    return {"sslmode": mode}


def _flag(value: str) -> bool:
    flag = value.strip().lower()
    if flag not in _TRUE | _FALSE:
        raise ValueError("is neither true nor false; use true or false")
    return flag in _TRUE


def _seconds(value: str) -> dict[str, str]:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError("is not a number of seconds; use e.g. 10")
    return {"connect_timeout": str(max(2, math.ceil(seconds)))}


def _unix_socket(value: str) -> dict[str, str]:
    folder, _, name = value.rpartition("/")
    port = name.removeprefix(".s.PGSQL.")
    if not folder or not port.isdigit():
        raise ValueError("is not the path of a PostgreSQL socket; use e.g. /run/.s.PGSQL.5432")
    return {"host": folder, "port": port}


_RULES: Final[Mapping[str, Callable[[str], dict[str, str]]]] = {
    "sslmode": _sslmode,  # libpq's, with asyncpg's spellings (verify_full) too
    "ssl": _sslmode,  # asyncpg
    "direct_tls": lambda value: {"sslnegotiation": "direct" if _flag(value) else "postgres"},
    "timeout": _seconds,  # asyncpg, pg8000: connection timeout
    "unix_sock": _unix_socket,  # pg8000
    "tcp_keepalive": lambda value: {"keepalives": "1" if _flag(value) else "0"},  # pg8000
}


@functools.cache
def _libpq_keywords() -> frozenset[str]:
    return frozenset(option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults())


def psycopg_engine(conninfo: str) -> Engine:
    """A SQLAlchemy engine that connects with psycopg to ``conninfo`` (for the commands)."""
    return create_engine(
        URL.create("postgresql+psycopg"), creator=lambda: psycopg.connect(conninfo)
    )


def refuse_other_flavour(target: object, *, api: str, is_async: bool) -> None:
    """Refuse an engine or connection of the other flavour, naming ``api``'s twin."""
    wrong: tuple[type[Any], ...] = (
        (Engine, psycopg.Connection) if is_async else (AsyncEngine, psycopg.AsyncConnection)
    )
    twin = {**TWINS, **{a: s for s, a in TWINS.items()}}.get(api)
    if twin is None or not isinstance(target, wrong):
        return
    given = type(target).__name__
    if is_async:
        fix = f"a sync {given} is not for async code; use {twin} in sync code"
    else:
        fix = f"an {given} needs async code; use {twin} from async code"
    if api in _TAKE_URLS:
        fix += ", or pass the database URL, which both take"
    raise ConfigurationError(f"{api} got {shown(target)}: {fix}")


def check_engine(
    engine: object, *, api: str, is_async: bool, fix: str = "pass the application's engine"
) -> None:
    """Refuse anything but a SQLAlchemy engine of the flavour ``api`` takes, naming the fix
    (for the other flavour, ``api``'s twin)."""
    kind = AsyncEngine if is_async else Engine
    if isinstance(engine, kind):
        return
    refuse_other_flavour(engine, api=api, is_async=is_async)
    raise ConfigurationError(
        f"{api} needs a sqlalchemy {kind.__name__}, got {shown(engine)}; {fix}"
    )
