"""``fleetci cache service install|uninstall|status``: parse, call ``fleetci.cache.service``, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleetci.cli.args import arg_type
from fleetci.config import parse_port

PORT = arg_type(parse_port)


def register(verbs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from fleetci.cache.service import DEFAULT_PORT
    from fleetci.cache.settings import WELL_KNOWN_SOCKET

    v: argparse.ArgumentParser = verbs.add_parser(
        "service", help="install, remove or check the host's proxy as a systemd service (one per host)"
    )
    v.add_argument("action", choices=("install", "uninstall", "status"))
    v.add_argument("--root", default="/", help="write under this prefix and leave systemd alone (/)")
    v.add_argument("--group", default="", help="group of the runner users that may use the socket (none)")
    v.add_argument("--port", type=PORT, default=DEFAULT_PORT, help=f"loopback TCP port ({DEFAULT_PORT})")
    v.add_argument("--env-file", help="settings in .env.cache form to install (e.g. ./.env.cache)")
    v.add_argument(
        "--socket", default=WELL_KNOWN_SOCKET, help=f"socket 'status' checks ({WELL_KNOWN_SOCKET})"
    )
    v.set_defaults(func=cmd_service)


def cmd_service(args: argparse.Namespace) -> int:
    from fleetci.cache import service

    root = Path(args.root)
    if args.action == "install":
        env_file = Path(args.env_file) if args.env_file else None
        done = service.install(root, group=args.group, port=args.port, env_file=env_file)
        print(f"wrote {done.unit} and {done.env_file}")
        if done.enabled:
            print(f"enabled and started {service.UNIT_NAME}")
        else:
            print(f"enabling was skipped ({done.note}): run 'systemctl enable --now {service.UNIT_NAME}'")
        return 0
    if args.action == "uninstall":
        for path in service.uninstall(root):
            print(f"removed {path}")
        print(f"kept {root / service.ENV_PATH} and the cache state (they may hold the fleet secret)")
        return 0
    return 0 if service.status(Path(args.socket), root) else 1
