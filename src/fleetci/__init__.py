"""fleetci: make CI fleets cheaper and less flaky."""

__version__ = "0.1.0"
