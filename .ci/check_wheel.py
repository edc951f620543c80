"""Fail unless the wheel carries the package, every migration revision and py.typed."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

root = Path(__file__).resolve().parent.parent
wheel = zipfile.ZipFile(sys.argv[1])
names = set(wheel.namelist())
# The main branch and the opt-in branches (partitioned layout, feed, audit).
folders = {"migrations": "evl_*.py", "migrations_partitioned": "evlpart_*.py"}
folders["migrations_feed"] = "evlfeed_*.py"
folders["migrations_audit"] = "evlaudit_*.py"
revisions = {
    folder: sorted(p.name for p in (root / "src/eventlog_persist" / folder).glob(pattern))
    for folder, pattern in folders.items()
}
required = {"eventlog_persist/__init__.py", "eventlog_persist/py.typed"}
for folder, files in revisions.items():
    required.add(f"eventlog_persist/{folder}/__init__.py")
    required.update(f"eventlog_persist/{folder}/{name}" for name in files)
missing = sorted(required - names)
if missing or not all(revisions.values()):
    sys.exit(f"wheel {sys.argv[1]} lacks {missing or 'every migration revision'}")
count = sum(len(files) for files in revisions.values())
print(f"wheel OK: {count} revision(s), py.typed, {len(names)} files")
