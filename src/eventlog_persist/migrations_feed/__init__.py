"""Alembic revisions of the opt-in ``eventlog_feed`` branch; hosts add
``eventlog_persist:migrations_feed`` to ``version_locations`` next to
``eventlog_persist:migrations``. Each revision file is frozen history and imports nothing from
this package.
"""
