"""The writers' and readers' tests again, on the partitioned layout (revision evlpart_0001).

The test functions are imported from their modules; the two fixtures below replace the
plain ``EventLog`` model and table by the partitioned ones for every test that takes them.
``create_partitions`` covers every ``created_at`` (weekly partitions around now, range
partitions below and above), so tests that write old or future events run unchanged.
"""

from __future__ import annotations

import pytest
from hostmodels import HostModels, build_host_models, create_partitions
from sqlalchemy import Engine, text
from test_delivery import *  # noqa: F403
from test_reader import *  # noqa: F403
from test_reader import World
from test_reader_bounds import *  # noqa: F403
from test_retention import *  # noqa: F403
from test_write_buffered import *  # noqa: F403
from test_write_bulk import *  # noqa: F403
from test_write_record import *  # noqa: F403


@pytest.fixture
def host_models() -> HostModels:
    """The UUID-keyed host with ``EventLog`` in the partitioned layout."""
    return build_host_models(partitioned=True)


@pytest.fixture
def host_engine(engine: Engine, host_models: HostModels) -> Engine:
    """The fresh database with the host's tables and a partitioned, partitioned-ahead table."""
    host_models.Base.metadata.create_all(engine)
    create_partitions(engine)
    return engine


@pytest.fixture
def tenant_engine(host_engine: Engine, host_models: HostModels, world: World) -> Engine:
    """test_reader's ``tenant_engine``, its schema's ``event_logs`` given partitions too."""
    tenant = host_engine.execution_options(schema_translate_map={None: "tenant_b"})
    with host_engine.begin() as connection:
        connection.execute(text("CREATE SCHEMA tenant_b"))
    host_models.Base.metadata.create_all(tenant)
    create_partitions(host_engine, schema="tenant_b")
    with host_engine.begin() as connection:
        for table in host_models.Base.metadata.sorted_tables:
            connection.execute(
                text(f'INSERT INTO tenant_b."{table.name}" SELECT * FROM public."{table.name}"')
            )
        connection.execute(text("UPDATE tenant_b.event_logs SET event_type = 'tenant_b'"))
    return tenant


# Restarts a server of its own, whose table has no partitions: not a test of the layout.
del test_server_restart_mid_stream_loses_and_doubles_nothing  # noqa: F821
