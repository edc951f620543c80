"""Alembic revisions of the opt-in ``eventlog_audit`` branch; hosts add
``eventlog_persist:migrations_audit`` to ``version_locations`` next to
``eventlog_persist:migrations`` and ``eventlog_persist:migrations_feed``. Each revision file is
frozen history and imports nothing from this package.
"""
