"""Alembic revisions of the ``eventlog`` branch; hosts add ``eventlog_persist:migrations`` to
``version_locations``. Each revision file is frozen history and imports nothing from this package.
"""
