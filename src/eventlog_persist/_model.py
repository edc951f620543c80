"""The ``EventLog`` ORM model, bound to the host's declarative ``Base``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar, overload

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column
from sqlalchemy.sql.elements import conv

from eventlog_persist._audit_schema import audit_tables, created_at_bound
from eventlog_persist._feed_schema import Xid8, consumers_table, register_feed_types
from eventlog_persist._ids import new_event_id
from eventlog_persist._schema import (
    APPROVAL_STATUS_LENGTH,
    ERROR_CODE_LENGTH,
    EVENT_TYPE_LENGTH,
    FEED_INDEX_NAME,
    FK_NAMES,
    PK_NAME,
    REQUEST_ID_LENGTH,
    SPAN_ID_LENGTH,
    TABLE_NAME,
    TOOL_NAME_LENGTH,
    TRACE_ID_LENGTH,
)
from eventlog_persist._targets import ForeignKeyTargets
from eventlog_persist.exceptions import ConfigurationError

__all__ = ["EventLogMixin", "JSONValue", "KeyT", "event_log_model"]

JSONValue: TypeAlias = dict[str, Any] | list[Any] | str | int | float | bool | None
"""Any JSON document: what ``payload`` holds."""

KeyT = TypeVar("KeyT", uuid.UUID, int)
"""The Python type of the host's primary keys: ``uuid.UUID`` or ``int``."""

# JSONB on PostgreSQL; plain JSON elsewhere so a host's SQLite ``create_all()`` keeps working.
_PAYLOAD_TYPE = JSON().with_variant(JSONB(), "postgresql")


def _now() -> datetime:
    return datetime.now(UTC)


class EventLogMixin(Generic[KeyT]):
    """Columns, keys and indexes of ``event_logs``; a host class inherits it and its ``Base``.

    ``KeyT`` is the Python type of the host's primary keys (``uuid.UUID`` or ``int``); the
    SQL types of the foreign-key columns are copied from the referenced columns, so UUID,
    INTEGER and BIGINT hosts all work. Set ``__eventlog_targets__`` to point the foreign keys
    at other table names or another schema::

        class EventLog(EventLogMixin[uuid.UUID], Base):
            __eventlog_targets__ = ForeignKeyTargets(users="accounts")

    Every constraint and index has a fixed name that a host ``naming_convention`` cannot
    rewrite, so the model always matches the shipped migration.

    Set ``__eventlog_partitioned__ = True`` when the host opted in to the partitioned layout
    (revision ``evlpart_0001``): the primary key is then ``(id, created_at)`` and the table
    is range-partitioned on ``created_at``, as in the database.

    Set ``__eventlog_feed__ = True`` when the host opted in to the feed (revision
    ``evlfeed_0001``): the model then has the ``xid`` column and its index, and the
    ``event_log_consumers`` table joins the same metadata. Without it ``xid`` is ``None``.

    Set ``__eventlog_audit__ = True`` (with ``__eventlog_feed__``) when the host opted in
    to the audit (revisions ``evlaudit_0001`` to ``evlaudit_0005``): the tables
    ``event_log_erasures`` and ``event_log_seals`` join the same metadata, and
    ``event_logs`` gets the CHECK ``ck_event_logs_created_at_range`` (the years 1 to 9999,
    UTC).
    """

    __eventlog_targets__: ClassVar[ForeignKeyTargets] = ForeignKeyTargets()
    __eventlog_partitioned__: ClassVar[bool] = False
    __eventlog_feed__: ClassVar[bool] = False
    __eventlog_audit__: ClassVar[bool] = False

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return TABLE_NAME

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        targets = _targets_of(cls)
        partitioned = _partitioned(cls)
        # Partitioned: PostgreSQL requires the partition key in every unique key.
        key = ("id", "created_at") if partitioned else ("id",)
        options: dict[str, Any] = {"schema": targets.schema}
        if partitioned:
            options["postgresql_partition_by"] = "RANGE (created_at)"
        feed: tuple[Index, ...] = ()
        if _feed(cls):
            # The feed's keyset: batches are read in (xid, id) order between two snapshots.
            feed = (Index(conv(FEED_INDEX_NAME), "xid", "id"),)
            register_feed_types()
            consumers_table(_metadata_of(cls), schema=targets.schema)
        audit: tuple[CheckConstraint, ...] = ()
        if _audit(cls):
            audit_tables(_metadata_of(cls), schema=targets.schema)
            audit = (created_at_bound(),)
        return (
            PrimaryKeyConstraint(*key, name=conv(PK_NAME)),
            # Timelines of a session / user; the leading column also serves the FK's ON DELETE.
            Index(conv("ix_event_logs_session_id_created_at"), "session_id", "created_at"),
            Index(conv("ix_event_logs_user_id_created_at"), "user_id", "created_at"),
            # Partial: most events may have no project / agent, and ON DELETE SET NULL only
            # ever looks for non-null keys, so those rows need no index entry.
            Index(
                conv("ix_event_logs_project_id_created_at"),
                "project_id",
                "created_at",
                postgresql_where=text("project_id IS NOT NULL"),
            ),
            Index(
                conv("ix_event_logs_agent_id_created_at"),
                "agent_id",
                "created_at",
                postgresql_where=text("agent_id IS NOT NULL"),
            ),
            *feed,
            *audit,
            options,
        )

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        # With the feed, xid has a server default that the ORM would read back with RETURNING
        # on every INSERT (slower writes); nothing needs it then, and it loads on access.
        return {"eager_defaults": False} if _feed(cls) else {}

    # The primary key is declared in __table_args__: (id), or (id, created_at) when partitioned.
    id: Mapped[uuid.UUID] = mapped_column(Uuid(), default=new_event_id, sort_order=-10)

    @declared_attr
    def session_id(cls) -> Mapped[KeyT]:
        return _foreign_key(cls, "session_id", "chat_sessions", "CASCADE", nullable=False)

    @declared_attr
    def user_id(cls) -> Mapped[KeyT]:
        return _foreign_key(cls, "user_id", "users", "CASCADE", nullable=False)

    @declared_attr
    def project_id(cls) -> Mapped[KeyT | None]:
        return _foreign_key(cls, "project_id", "user_projects", "SET NULL", nullable=True)

    @declared_attr
    def agent_id(cls) -> Mapped[KeyT | None]:
        return _foreign_key(cls, "agent_id", "user_agents", "SET NULL", nullable=True)

    event_type: Mapped[str] = mapped_column(String(EVENT_TYPE_LENGTH), sort_order=-5)
    payload: Mapped[JSONValue] = mapped_column(
        _PAYLOAD_TYPE, nullable=False, server_default=text("'{}'"), sort_order=-4
    )
    # Each row gets its own time (the client's clock) on every ORM and Core insert; the
    # server default now() is the transaction's start, the same for every row it inserts.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_now, server_default=func.now(), sort_order=-3
    )
    error_code: Mapped[str | None] = mapped_column(String(ERROR_CODE_LENGTH))
    tool_name: Mapped[str | None] = mapped_column(String(TOOL_NAME_LENGTH))
    approval_status: Mapped[str | None] = mapped_column(String(APPROVAL_STATUS_LENGTH))
    # Since revision evl_0002: where the event was recorded (see event_context).
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH))
    trace_id: Mapped[str | None] = mapped_column(String(TRACE_ID_LENGTH))
    span_id: Mapped[str | None] = mapped_column(String(SPAN_ID_LENGTH))

    @declared_attr
    def xid(cls) -> Mapped[int | None]:
        """Since revision evlfeed_0001 (opt-in): the id of the transaction that wrote the row.

        Filled by the database (``DEFAULT pg_current_xact_id()``) on every write path; NULL
        for rows stored before the opt-in. ``None`` on models that did not opt in.
        """
        if not _feed(cls):
            return None  # type: ignore[return-value]  # no column: the host did not opt in
        return mapped_column(
            Xid8(), server_default=text("pg_current_xact_id()"), nullable=True, sort_order=10
        )

    def __init__(
        self,
        *,
        session_id: KeyT,
        user_id: KeyT,
        event_type: str,
        payload: JSONValue = None,
        project_id: KeyT | None = None,
        agent_id: KeyT | None = None,
        error_code: str | None = None,
        tool_name: str | None = None,
        approval_status: str | None = None,
        created_at: datetime | None = None,
        id: uuid.UUID | None = None,
        request_id: str | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        # The id is set now, not at flush, so a caller can log or return it at once; it
        # records the event's time (see new_event_id).
        if id is None:
            aware = isinstance(created_at, datetime) and created_at.utcoffset() is not None
            id = new_event_id(created_at if aware else None)
        self.id = id
        self.session_id = session_id
        self.user_id = user_id
        self.event_type = event_type
        self.payload = {} if payload is None else payload
        self.project_id = project_id
        self.agent_id = agent_id
        self.error_code = error_code
        self.tool_name = tool_name
        self.approval_status = approval_status
        self.created_at = _now() if created_at is None else created_at
        self.request_id = request_id
        self.trace_id = trace_id
        self.span_id = span_id

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} id={self.id} event_type={self.event_type!r} "
            f"session_id={self.session_id!r}>"
        )


_COLUMN_ORDER = {"session_id": -9, "user_id": -8, "project_id": -7, "agent_id": -6}


def _targets_of(cls: Any) -> ForeignKeyTargets:
    targets = getattr(cls, "__eventlog_targets__", None)
    if not isinstance(targets, ForeignKeyTargets):
        raise ConfigurationError(
            f"{cls.__name__}.__eventlog_targets__ must be a ForeignKeyTargets instance, "
            f"got {targets!r}; set it to eventlog_persist.ForeignKeyTargets(...)"
        )
    return targets


def _partitioned(cls: Any) -> bool:
    partitioned = getattr(cls, "__eventlog_partitioned__", False)
    if not isinstance(partitioned, bool):
        raise ConfigurationError(
            f"{cls.__name__}.__eventlog_partitioned__ must be True or False, got {partitioned!r}"
        )
    return partitioned


def _metadata_of(cls: Any) -> MetaData:
    metadata = getattr(cls, "metadata", None)
    if not isinstance(metadata, MetaData):
        raise ConfigurationError(
            f"{cls.__name__} has no MetaData of a declarative Base (got {metadata!r}); "
            "inherit EventLogMixin together with the host's DeclarativeBase subclass"
        )
    return metadata


def _feed(cls: Any) -> bool:
    feed = getattr(cls, "__eventlog_feed__", False)
    if not isinstance(feed, bool):
        raise ConfigurationError(
            f"{cls.__name__}.__eventlog_feed__ must be True or False, got {feed!r}"
        )
    return feed


def _audit(cls: Any) -> bool:
    audit = getattr(cls, "__eventlog_audit__", False)
    if not isinstance(audit, bool):
        raise ConfigurationError(
            f"{cls.__name__}.__eventlog_audit__ must be True or False, got {audit!r}"
        )
    if audit:
        _check_audit(feed=_feed(cls))
    return audit


def _check_audit(*, feed: bool) -> None:
    if not feed:
        raise ConfigurationError(
            "the audit needs the feed: its revision evlaudit_0001 depends on the feed's xid "
            "column (evlfeed_0001). Pass feed=True too (__eventlog_feed__ = True), and add "
            "eventlog_persist:migrations_feed to version_locations"
        )


def _foreign_key(
    cls: Any, column: str, target: str, ondelete: str, *, nullable: bool
) -> Mapped[Any]:
    targets = _targets_of(cls)
    # No SQL type here: SQLAlchemy copies the referenced column's type (UUID, INTEGER, BIGINT).
    return mapped_column(
        ForeignKey(
            targets.qualified(getattr(targets, target)),
            ondelete=ondelete,
            name=conv(FK_NAMES[column]),
        ),
        nullable=nullable,
        sort_order=_COLUMN_ORDER[column],
    )


@overload
def event_log_model(
    base: type[DeclarativeBase],
    *,
    key_type: type[uuid.UUID] = ...,
    targets: ForeignKeyTargets | None = ...,
    class_name: str = ...,
    partitioned: bool = ...,
    feed: bool = ...,
    audit: bool = ...,
) -> type[EventLogMixin[uuid.UUID]]: ...


@overload
def event_log_model(
    base: type[DeclarativeBase],
    *,
    key_type: type[int],
    targets: ForeignKeyTargets | None = ...,
    class_name: str = ...,
    partitioned: bool = ...,
    feed: bool = ...,
    audit: bool = ...,
) -> type[EventLogMixin[int]]: ...


def event_log_model(
    base: type[DeclarativeBase],
    *,
    key_type: type[uuid.UUID] | type[int] = uuid.UUID,
    targets: ForeignKeyTargets | None = None,
    class_name: str = "EventLog",
    partitioned: bool = False,
    feed: bool = False,
    audit: bool = False,
) -> type[EventLogMixin[Any]]:
    """Create the ``EventLog`` model class on the host's declarative ``Base``.

    Args:
        base: The host's declarative base (a ``DeclarativeBase`` subclass); the model joins
            its ``metadata``, so the foreign keys resolve and Alembic autogenerate sees it.
        key_type: Python type of the host's primary keys, ``uuid.UUID`` or ``int``
            (``int`` also covers BIGINT keys). It types the foreign-key attributes; their SQL
            types are always copied from the referenced columns.
        targets: Names of the referenced host tables and their schema.
        class_name: Name of the generated class.
        partitioned: The host opted in to the partitioned layout (revision
            ``evlpart_0001``): primary key ``(id, created_at)``, range-partitioned on
            ``created_at``. Sets ``__eventlog_partitioned__``.

            .. versionadded:: 0.3.0
        feed: The host opted in to the feed (revision ``evlfeed_0001``): the ``xid``
            column (the writing transaction's id, filled by the database) and its index
            ``(xid, id)``, and the ``event_log_consumers`` table on the same metadata, so
            ``create_all()`` creates it and autogenerate compares it. Sets
            ``__eventlog_feed__``.

            .. versionadded:: 0.3.0
        audit: The host opted in to the audit (revisions ``evlaudit_0001`` to
            ``evlaudit_0005``, which need the feed): the tables ``event_log_erasures`` and
            ``event_log_seals`` on the same metadata, and the CHECK
            ``ck_event_logs_created_at_range`` on ``event_logs``. Needs ``feed=True``; works
            with either layout. Sets ``__eventlog_audit__``.

            .. versionadded:: 0.3.0

    Returns:
        A mapped class that inherits ``EventLogMixin`` and ``base``.

    Raises:
        ConfigurationError: An argument has a value the model cannot use.

    Example:
        >>> EventLog = event_log_model(Base)  # doctest: +SKIP
    """
    if not (isinstance(base, type) and issubclass(base, DeclarativeBase)):
        raise ConfigurationError(
            f"base must be the host's declarative base class (a sqlalchemy.orm.DeclarativeBase "
            f"subclass), got {base!r}"
        )
    if key_type not in (uuid.UUID, int):
        raise ConfigurationError(
            f"key_type must be uuid.UUID or int (the Python type of the host's primary keys), "
            f"got {key_type!r}"
        )
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise ConfigurationError(f"class_name must be a Python identifier, got {class_name!r}")
    if not isinstance(partitioned, bool):
        raise ConfigurationError(f"partitioned must be True or False, got {partitioned!r}")
    if not isinstance(feed, bool):
        raise ConfigurationError(f"feed must be True or False, got {feed!r}")
    if not isinstance(audit, bool):
        raise ConfigurationError(f"audit must be True or False, got {audit!r}")
    if audit:
        _check_audit(feed=feed)
    namespace: dict[str, Any] = {
        "__eventlog_targets__": targets or ForeignKeyTargets(),
        "__eventlog_partitioned__": partitioned,
        "__eventlog_feed__": feed,
        "__eventlog_audit__": audit,
        "__module__": base.__module__,
        "__qualname__": class_name,
    }
    return type(class_name, (EventLogMixin, base), namespace)
