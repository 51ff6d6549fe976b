"""Allow ``python -m fleetci``."""

from fleetci.cli import main

raise SystemExit(main())
