"""An auditor's own recomputation of the seals, written from docs/audit.md alone (RFC 6962
Merkle roots, chunk ends, the tombstone and seal documents), sharing no code with the
package: a sealer and a verifier that shared a wrong function would agree with each other."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from auditkit import leaves
from sqlalchemy import Connection, text


def rfc6962_root(nodes: list[bytes]) -> bytes:
    """RFC 6962's Merkle tree hash by its recursive definition (the package pairs levels)."""
    if not nodes:
        return hashlib.sha256(b"").digest()
    if len(nodes) == 1:
        return nodes[0]
    split = 1 << ((len(nodes) - 1).bit_length() - 1)  # the largest power of two below n
    left, right = rfc6962_root(nodes[:split]), rfc6962_root(nodes[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def documented_json(document: dict[str, Any]) -> bytes:
    """One JSON object, UTF-8, no whitespace, keys in code point order."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def in_window(xid: int | None, start: int | None, end: int) -> bool:
    """Seal 1 (no start) also holds the events without an xid."""
    if start is None:
        return xid is None or xid < end
    return xid is not None and start <= xid < end


def documented_seals(connection: Connection) -> list[tuple[Any, ...]]:
    """Every seal recomputed from the events and tombstones as docs/audit.md describes."""
    present = leaves(connection)
    xids = {
        row.id: None if row.xid is None else int(row.xid)
        for row in connection.execute(text("SELECT id, xid::text AS xid FROM event_logs"))
    }
    stones = (
        connection.execute(
            text(
                "SELECT seq, kind, event_id, event_created_at, event_xid::text AS event_xid, "
                "session_id, user_id, project_id, agent_id, leaf, erased_at, "
                "erased_xid::text AS erased_xid FROM event_log_erasures ORDER BY seq"
            )
        )
        .mappings()
        .all()
    )
    first_written: dict[uuid.UUID, tuple[int | None, bytes]] = {}
    for stone in stones:  # the earliest tombstone of an event holds its first-written leaf
        event_xid = None if stone["event_xid"] is None else int(stone["event_xid"])
        first_written.setdefault(stone["event_id"], (event_xid, bytes(stone["leaf"])))
    events = {event_id: (xids[event_id], leaf) for event_id, leaf in present.items()}
    events.update(first_written)
    seals = connection.execute(
        text(
            "SELECT seq, xid_from::text AS xid_from, xid_to::text AS xid_to, chunk_size "
            "FROM event_log_seals ORDER BY seq"
        )
    ).all()
    recomputed = []
    previous: bytes | None = None
    for seq, xid_from, xid_to, chunk_size in seals:
        start, end = None if xid_from is None else int(xid_from), int(xid_to)
        window = sorted(
            (
                (xid is not None, xid or 0, event_id, leaf)
                for event_id, (xid, leaf) in events.items()
                if in_window(xid, start, end)
            ),
        )
        chunks = [window[i : i + chunk_size] for i in range(0, len(window), chunk_size)]
        chunk_roots = [rfc6962_root([leaf for *_, leaf in chunk]) for chunk in chunks]
        chunk_ends = b"".join(
            xid.to_bytes(8, "big") + event_id.bytes
            for _, xid, event_id, _ in (c[-1] for c in chunks)
        )
        tombstones = sorted(
            (
                (int(stone["erased_xid"]), stone["seq"], stone)
                for stone in stones
                if in_window(int(stone["erased_xid"]), start, end)
            ),
            key=lambda item: item[:2],
        )
        erasures_root = rfc6962_root(
            [
                hashlib.sha256(
                    b"\x00"
                    + documented_json(
                        {
                            "agent_id": stone["agent_id"],
                            "project_id": stone["project_id"],
                            "session_id": stone["session_id"],
                            "user_id": stone["user_id"],
                            "erased_at": utc_text(stone["erased_at"]),
                            "erased_xid": stone["erased_xid"],
                            "event_created_at": utc_text(stone["event_created_at"]),
                            "event_id": str(stone["event_id"]),
                            "event_xid": stone["event_xid"],
                            "kind": stone["kind"],
                            "leaf": bytes(stone["leaf"]).hex(),
                            "seq": str(stone["seq"]),
                            "v": 1,
                        }
                    )
                ).digest()
                for *_, stone in tombstones
            ]
        )
        events_root = rfc6962_root(chunk_roots)
        seal = {
            "chunk_ends": chunk_ends.hex(),
            "chunk_roots": b"".join(chunk_roots).hex(),
            "chunk_size": chunk_size,
            "erasures": len(tombstones),
            "erasures_root": erasures_root.hex(),
            "events": len(window),
            "events_root": events_root.hex(),
            "prev_hash": None if previous is None else previous.hex(),
            "seq": seq,
            "v": 1,
            "xid_from": xid_from,
            "xid_to": xid_to,
        }
        seal_hash = hashlib.sha256(documented_json(seal)).digest()
        recomputed.append(
            (
                seq,
                len(window),
                len(tombstones),
                b"".join(chunk_roots),
                chunk_ends,
                events_root,
                erasures_root,
                previous,
                seal_hash,
            )
        )
        previous = seal_hash
    return recomputed
