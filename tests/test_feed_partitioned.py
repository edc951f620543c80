"""The feed's consumers, wake-ups and tails again, on the partitioned layout with the feed
(revisions evlpart_0001 and evlfeed_0001): the test functions are imported from their
modules, and the two fixtures below replace the host's model and tables."""

from __future__ import annotations

import pytest
from hostmodels import HostModels, build_host_models, create_partitions
from sqlalchemy import Engine
from test_feed_consumers import *  # noqa: F403
from test_feed_tail import *  # noqa: F403
from test_feed_wakeup import *  # noqa: F403


@pytest.fixture
def host_models() -> HostModels:
    """The UUID-keyed host with a feed ``EventLog`` in the partitioned layout."""
    return build_host_models(partitioned=True, feed=True)


@pytest.fixture
def host_engine(engine: Engine, host_models: HostModels) -> Engine:
    """The fresh database with the host's tables and a partitioned, partitioned-ahead table."""
    host_models.Base.metadata.create_all(engine)
    create_partitions(engine)
    return engine


# Its EXPLAIN names the plain table's indexes; a partition's have names of their own.
del test_a_session_tail_reads_through_the_sessions_index  # noqa: F821
# Their models are plain: not a test of the layout.
del test_writers_of_a_table_without_the_feed_do_not_notify  # noqa: F821
del test_a_model_without_the_feed_is_refused  # noqa: F821
