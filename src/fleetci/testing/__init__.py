"""Test doubles of the services fleetci talks to, real enough to measure against (see ``github``)."""

from fleetci.testing.github import DEFAULT_OWNER, TOKENS, EmulatorConfig, EmulatorServer, GitHubEmulator

__all__ = ["DEFAULT_OWNER", "TOKENS", "EmulatorConfig", "EmulatorServer", "GitHubEmulator"]
