"""What value detection adds to ``prepare_payload``: detectors on vs off, as a ratio from one run.

    python benchmarks/redaction_bench.py                  # 600 payloads, 15 rounds
    python benchmarks/redaction_bench.py --payloads 200 --rounds 5
    python benchmarks/redaction_bench.py --svg docs/benchmarks/redaction.svg  # also a chart

Every round prepares the same typical LLM payloads (chat messages with text content, tool
calls with JSON arguments, tool results, usage counters; English prose with URLs, code and
hyphenated words, so the cheap substring tests do hit) from the caller's own dicts, under
the default policy and under the same policy with ``detectors=frozenset()``; key redaction
is on in both. Small chunks of payloads are prepared under both back to back, in this
process's CPU time, so that other jobs on a shared machine hit both alike (see `compare`).
A second pair does the same on payloads that each hold one secret in their text, so that
the masking itself is measured too. Printed: mean CPU microseconds per payload of each
variant and the ratio on/off.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import _svg

from eventlog_persist import PayloadPolicy, prepare_payload

VOCABULARY = (
    "the user asked to book a table for two near station restaurant agent searched web found "
    "three options here is summary Italian stars open until review price menu vegetarian "
    "booking confirmed tomorrow evening please check availability and reply with details "
    "risk-free task-based follow-up well-known JSON API response request timeout retry "
    "I think this works but the result may differ"
)
WORDS = VOCABULARY.split()
CODE = (
    "def get_user_profile(user_id: int) -> dict:\n"
    '    row = db.fetch_one("SELECT * FROM users WHERE id = %s", (user_id,))\n'
    '    return {"id": row["id"], "name": row["full_name"], "is_active": True}\n'
)
CHUNK = 20
OFF = PayloadPolicy(detectors=frozenset())
ON = PayloadPolicy()


def prose(rng: random.Random, words: int) -> str:
    """English-like text with a link now and then."""
    out = []
    for n in range(words):
        out.append(rng.choice(WORDS))
        if n % 40 == 39:
            out.append(f"(see https://example.com/places/{rng.randrange(10_000)}).")
    return " ".join(out)


def chat(rng: random.Random) -> dict[str, object]:
    return {
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 1024,
        "messages": [
            {"role": "system", "content": "You are a helpful booking assistant."},
            {"role": "user", "content": prose(rng, rng.randrange(20, 80))},
            {"role": "assistant", "content": prose(rng, rng.randrange(60, 200))},
        ],
        "usage": {"input_tokens": 812, "output_tokens": 233, "total_tokens": 1045},
    }


def tool_call(rng: random.Random) -> dict[str, object]:
    arguments = {"query": prose(rng, 8), "limit": rng.randrange(1, 10), "lang": "en"}
    return {
        "model": "claude-sonnet-4",
        "messages": [
            {"role": "user", "content": prose(rng, rng.randrange(10, 40))},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{rng.randrange(16**8):08x}",
                        "type": "function",
                        "function": {"name": "web_search", "arguments": json.dumps(arguments)},
                    }
                ],
            },
        ],
        "usage": {"input_tokens": 301, "output_tokens": 42, "cache_read_input_tokens": 0},
    }


def tool_result(rng: random.Random) -> dict[str, object]:
    return {
        "tool_call_id": f"call_{rng.randrange(16**8):08x}",
        "tool_name": "run_code",
        "content": [
            {"type": "text", "text": prose(rng, rng.randrange(150, 500))},
            {"type": "text", "text": CODE * rng.randrange(1, 4)},
        ],
        "is_error": False,
        "duration_ms": rng.randrange(5, 900),
    }


def with_secret(payload: dict[str, object], rng: random.Random) -> dict[str, object]:
    """The payload with one fake secret (built here, never a real one) in a text field."""
    secret = rng.choice(
        [
            "sk-proj-" + "Ab1" * 20,
            "AKIA" + "A1B2" * 4,
            "ghp_" + "a1" * 18,
            "postgresql://app:" + "pw" * 6 + "@db/app",
            "Bearer " + "eyJ" + "a" * 20 + ".eyJ" + "b" * 30 + "." + "c" * 20,
        ]
    )
    return {**payload, "note": f"the user pasted {secret} into the chat by mistake"}


def payloads(count: int, seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    makers = (chat, tool_call, tool_result)
    return [makers[n % len(makers)](rng) for n in range(count)]


def compare(items: list[dict[str, object]], rounds: int) -> tuple[float, float]:
    """Mean CPU seconds per payload with detectors off and on.

    The payloads are cut into chunks of ``CHUNK``; each chunk is prepared under both policies
    back to back, the first of the two alternating, and timed in this process's CPU time, so
    that other jobs on a shared machine neither add time nor hit one variant more than the
    other. Each chunk counts with its median over the rounds.
    """
    chunks = [items[start : start + CHUNK] for start in range(0, len(items), CHUNK)]
    off: list[list[float]] = [[] for _ in chunks]
    on: list[list[float]] = [[] for _ in chunks]
    clock = time.process_time
    for round_ in range(rounds):
        for index, chunk in enumerate(chunks):
            pairs = ((OFF, off), (ON, on))
            for policy, times in pairs if (index + round_) % 2 == 0 else pairs[::-1]:
                started = clock()
                for item in chunk:
                    prepare_payload(item, policy=policy)
                times[index].append(clock() - started)
    return (
        sum(map(statistics.median, off)) / len(items),
        sum(map(statistics.median, on)) / len(items),
    )


def run(count: int, rounds: int) -> dict[str, tuple[float, float]]:
    clean = payloads(count)
    rng = random.Random(11)
    secret = [with_secret(item, rng) for item in clean]
    # Sanity: the clean payloads need no masking, each secret payload needs some.
    assert all(not prepare_payload(item).redacted_paths for item in clean)
    assert all(prepare_payload(item).redacted_paths == ("/note",) for item in secret)
    for item in clean[:20]:  # warm-up
        prepare_payload(item, policy=ON)
        prepare_payload(item, policy=OFF)
    return {
        "typical payloads, no secret": compare(clean, rounds),
        "same payloads, one secret each": compare(secret, rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--svg", type=Path, help="also draw the figures as an SVG chart here")
    args = parser.parse_args()
    results = run(args.payloads, args.rounds)
    sizes = [len(prepare_payload(item).json_text) for item in payloads(args.payloads)]
    print(
        f"{args.payloads} payloads (median {statistics.median(sizes):,.0f} bytes of JSON), "
        f"{args.rounds} interleaved rounds, Python {sys.version.split()[0]}, "
        f"{platform.machine()}"
    )
    print(f"{'payloads':<32} {'off µs':>8} {'on µs':>8} {'on/off':>7}")
    for name, (off, on) in results.items():
        print(f"{name:<32} {off * 1e6:>8.1f} {on * 1e6:>8.1f} {on / off:>7.3f}")
    if args.svg:
        chart = _svg.bar_chart(
            "prepare_payload: CPU time per payload, value detection off and on",
            [
                (
                    f"{name} ({on / off:.2f}x)",
                    {"detectors off": off * 1e6, "detectors on": on * 1e6},
                )
                for name, (off, on) in results.items()
            ],
            subtitle=(
                f"{datetime.now(UTC):%Y-%m-%d}: {args.payloads} payloads, median "
                f"{statistics.median(sizes):,.0f} B of JSON, {args.rounds} interleaved rounds, "
                f"Python {platform.python_version()}; no database write"
            ),
            unit=" µs",
        )
        print(f"chart written to {_svg.write(args.svg, chart)}")


if __name__ == "__main__":
    main()
