"""Helpers shared by the p2p unit and integration tests."""

from __future__ import annotations

SECRET = "correct horse battery staple"


FLEET = "test-fleet"
