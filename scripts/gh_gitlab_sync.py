#!/usr/bin/env python3
"""Seed-compatible entry point: ``gh_gitlab_sync.py <verb> [flags]`` forwards to ``fleetci registry``."""

import sys

from fleetci.cli import main

if __name__ == "__main__":
    sys.exit(main(["registry", *sys.argv[1:]]))
