"""``python -m metricsbuf.testing``: run the fake service in this process (see `main`)."""

from ._process import main

raise SystemExit(main())
