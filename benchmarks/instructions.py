"""Count the CPU instructions of building an event, against ``json.dumps`` of its payload.

Wall-clock figures on a shared machine swing with the load; instruction counts do not. Each
step runs N times in a process of its own under ``valgrind --tool=callgrind``, next to an
empty run of the same process, and the difference divided by N is its cost per call. The
payload is the write benchmark's ~610-byte LLM tool call.

Usage: python benchmarks/instructions.py [--calls 3000]     (needs valgrind on the PATH)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

STEPS = {
    "json.dumps(payload) (reference)": "dumps",
    "prepare the payload's JSON text (what an event keeps)": "payload_text",
    "  of which: the walk over its values": "walk",
    "  of which: the value-detector scan of its text": "scan",
    "new_event(**d) without a payload (the fixed cost)": "empty_event",
    "new_event(**d)": "new_event",
    "BufferedWriter.enqueue(**d), writer idle": "enqueue",
}


def step(name: str, calls: int) -> Callable[[], object]:
    """The loop that ``name`` times, set up beforehand (its setup is in the empty run too)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import json

    from write_bench import EventLog, payload

    from eventlog_persist import BufferedWriter, new_event
    from eventlog_persist._payload import _ENCODE, DEFAULT_POLICY, payload_text

    payloads = [payload(i) for i in range(calls)]
    texts = [_ENCODE(value).decode() for value in payloads]
    keys = {"session_id": uuid.uuid4(), "user_id": uuid.uuid4()}
    fields = {"event_type": "tool_call", "tool_name": "search_places", **keys}
    quick = DEFAULT_POLICY._quick
    assert quick is not None
    assert quick.masker is not None
    walk, scan = quick.walk, quick.masker.may_find_in
    # Never started (enqueue only queues): a writer thread would add its own instructions.
    writer = BufferedWriter(EventLog, "postgresql://nowhere/none", max_queued=calls + 1)
    loops: dict[str, Callable[[], object]] = {
        "empty": lambda: None,
        "dumps": lambda: [json.dumps(value) for value in payloads],
        "payload_text": lambda: [payload_text(value, DEFAULT_POLICY) for value in payloads],
        "walk": lambda: [walk(value, 64) for value in payloads],
        "scan": lambda: [scan(text) for text in texts],
        "empty_event": lambda: [new_event(payload={}, **fields) for _ in payloads],
        "new_event": lambda: [new_event(payload=value, **fields) for value in payloads],
        "enqueue": lambda: [writer.enqueue(payload=value, **fields) for value in payloads],
    }
    for value in payloads[:50]:  # warm caches (names seen, compiled patterns)
        new_event(payload=value, **fields)
    return loops[name]


def count(name: str, calls: int, valgrind: str) -> int:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        command = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"]
        command += [sys.executable, __file__, "--run", name, "--calls", str(calls)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no total for {name}:\n{done.stderr}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        step(args.run, args.calls)()
        return
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    empty = count("empty", args.calls, valgrind)
    per_call = {
        label: (count(name, args.calls, valgrind) - empty) / args.calls
        for label, name in STEPS.items()
    }
    reference = per_call["json.dumps(payload) (reference)"]
    print(f"Python {sys.version.split()[0]}, {args.calls} calls each, instructions per call")
    print()
    print("| step | instructions per call | ratio to json.dumps |")
    print("|---|---:|---:|")
    for label, instructions in per_call.items():
        print(f"| {label} | {instructions:,.0f} | {instructions / reference:.2f} |")


if __name__ == "__main__":
    main()
