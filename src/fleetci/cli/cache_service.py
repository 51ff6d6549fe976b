"""``fleetci cache service install|uninstall|status``: parse, call ``fleetci.cache.service``, print."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(verbs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from fleetci.cache.settings import ServiceOptions

    v: argparse.ArgumentParser = verbs.add_parser(
        "service", help="install, remove or check the host's proxy as a systemd service (one per host)"
    )
    v.add_argument("action", choices=("install", "uninstall", "status"))
    v.add_argument("--root", default="/", help="write under this prefix and leave systemd alone (/)")
    v.add_argument("--env-file", help="settings in .env.cache form to install (e.g. ./.env.cache)")
    ServiceOptions.add_flags(v.add_argument_group("settings (flag > environment > config file > default)"))
    v.set_defaults(func=cmd_service)


def cmd_service(args: argparse.Namespace) -> int:
    from fleetci.cache import service
    from fleetci.cache.settings import ServiceOptions, service_settings
    from fleetci.config import load_config_file

    config = load_config_file(getattr(args, "config", None))
    settings = service_settings(ServiceOptions.flag_values(args), config)
    root = Path(args.root)
    if args.action == "install":
        env_file = Path(args.env_file) if args.env_file else None
        done = service.install(root, group=settings.group, port=settings.port, env_file=env_file)
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
    return 0 if service.status(settings.socket, root) else 1
