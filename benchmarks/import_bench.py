"""What ``import eventlog_persist`` costs a web worker: wall time and modules loaded.

Each measurement is a fresh interpreter (``python -X importtime`` would perturb timings), run
in interleaved rounds so that machine noise hits every variant alike. The baseline is what a
host that uses the package imports anyway: SQLAlchemy's ORM and psycopg.

    python benchmarks/import_bench.py                  # the installed package
    python benchmarks/import_bench.py --other-src DIR  # also another checkout's src/, e.g. the
                                                       # release before, for a before/after table
    python benchmarks/import_bench.py --svg docs/benchmarks/import.svg  # also a chart
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import _svg

_PROBE = """
import json, sys, time
start = time.perf_counter()
{statement}
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "modules": len(sys.modules),
                  "alembic": "alembic" in sys.modules}}))
"""

_VARIANTS = {
    "baseline: import sqlalchemy.orm, psycopg": "import sqlalchemy.orm, psycopg",
    "import eventlog_persist": "import sqlalchemy.orm, psycopg\nimport eventlog_persist",
    "... then eventlog_persist.check_setup (loads Alembic)": (
        "import sqlalchemy.orm, psycopg\nimport eventlog_persist\neventlog_persist.check_setup"
    ),
}


def _measure(statement: str, src: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(statement=statement)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--other-src", help="a src/ directory of another version to compare")
    parser.add_argument("--svg", type=Path, help="also draw the medians as an SVG chart here")
    args = parser.parse_args()
    trees: dict[str, str | None] = {"this": None}
    if args.other_src:
        trees["other"] = args.other_src
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for tree, src in trees.items():
            for name, statement in _VARIANTS.items():
                runs.setdefault((tree, name), []).append(_measure(statement, src))
    baseline = {
        tree: statistics.median(r["seconds"] for r in runs[(tree, next(iter(_VARIANTS)))])
        for tree in trees
    }
    print(
        f"{args.rounds} interleaved rounds, fresh interpreter each, Python {sys.version.split()[0]}"
    )
    print(
        f"{'tree':<6} {'variant':<56} {'median ms':>9} {'+ms':>7} {'x base':>7} {'modules':>8} "
        "alembic"
    )
    for (tree, name), results in runs.items():
        median = statistics.median(r["seconds"] for r in results)
        print(
            f"{tree:<6} {name:<56} {median * 1000:9.1f} "
            f"{(median - baseline[tree]) * 1000:7.1f} {median / baseline[tree]:7.2f} "
            f"{int(results[0]['modules']):8d} {'yes' if results[0]['alembic'] else 'no'}"
        )
    if args.svg:
        medians = {key: statistics.median(r["seconds"] for r in runs[key]) * 1000 for key in runs}
        chart = _svg.bar_chart(
            "Import time in a fresh interpreter (median ms)",
            [
                (name, {tree: medians[(tree, name)] for tree in trees if (tree, name) in medians})
                for name in _VARIANTS
            ],
            subtitle=(
                f"{args.rounds} interleaved rounds, Python {sys.version.split()[0]}"
                + ("; other: the --other-src tree" if args.other_src else "")
            ),
            unit=" ms",
            label=lambda value: f"{value:,.0f}",
        )
        print(f"chart written to {_svg.write(args.svg, chart)}")


if __name__ == "__main__":
    main()
