"""``python -m eventlog_persist``: the ``eventlog-persist`` command."""

from eventlog_persist._cli import main

raise SystemExit(main())
