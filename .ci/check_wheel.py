"""Fail unless the wheel carries the package, every migration revision and py.typed."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

root = Path(__file__).resolve().parent.parent
wheel = zipfile.ZipFile(sys.argv[1])
names = set(wheel.namelist())
revisions = sorted(p.name for p in (root / "src/eventlog_persist/migrations").glob("evl_*.py"))
required = {
    "eventlog_persist/__init__.py",
    "eventlog_persist/py.typed",
    "eventlog_persist/migrations/__init__.py",
    *(f"eventlog_persist/migrations/{name}" for name in revisions),
}
missing = sorted(required - names)
if missing or not revisions:
    sys.exit(f"wheel {sys.argv[1]} lacks {missing or 'every migration revision'}")
print(f"wheel OK: {len(revisions)} revision(s), py.typed, {len(names)} files")
