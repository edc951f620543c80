"""``test_reader_odd_rows`` on the partitioned layout: its catch-all partitions (from
``MINVALUE`` and to ``MAXVALUE``) hold the times Python cannot read, and the readers page
across them as on the plain table. A module of its own: its ``world`` fixture differs from
the one the modules in ``test_partitioned_layout`` share."""

from __future__ import annotations

from test_partitioned_layout import host_engine, host_models  # noqa: F401
from test_reader_odd_rows import *  # noqa: F403
