"""``python -m metricsbuf.testing``: run the fake service in this process (see `main`)."""

from ._server import main

raise SystemExit(main())
