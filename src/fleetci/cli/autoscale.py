"""``fleetci autoscale``: parse, call ``fleetci.autoscale``, print. ``service`` installs it under systemd."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleetci import gha


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "autoscale",
        help="scale self-hosted runner pools from queued jobs, read through the cache (+ webhooks)",
        description="Scale runner pools from the owner's queued jobs; settings: flag > environment > "
        "config file (autoscale:) > default. 'fleetci autoscale service install' runs it under systemd.",
    )
    _settings_flags(p)
    p.add_argument(
        "--once", action="store_true", help="one cycle, then exit (non-zero if a provider call failed)"
    )
    p.set_defaults(func=cmd_autoscale)
    verbs = p.add_subparsers(dest="autoscale_verb", metavar="VERB", parser_class=type(p))
    verbs.required = False
    v = verbs.add_parser("service", help="install, remove or check fleetci-autoscale@OWNER.service (systemd)")
    v.add_argument("action", choices=("install", "uninstall", "status"))
    v.add_argument("--root", default="/", help="write under this prefix and leave systemd alone (/)")
    _settings_flags(v)
    v.set_defaults(func=cmd_service)


def _settings_flags(p: argparse.ArgumentParser) -> None:
    from fleetci.autoscale.settings import AutoscaleOptions

    g = p.add_argument_group("settings (flag > environment > config file > default)")
    AutoscaleOptions.add_flags(g)
    g.add_argument(
        "--pool",
        dest="pools",
        action="append",
        metavar="LABELS[:min=N][:max=M]",
        help=f"{AutoscaleOptions.pools.help} (repeatable; default: {AutoscaleOptions.pools.shown_default()})",
    )


def _settings(args: argparse.Namespace, need_owner: bool = True) -> Any:
    from fleetci.autoscale.settings import AutoscaleOptions, autoscale_settings
    from fleetci.config import load_config_file

    config = load_config_file(getattr(args, "config", None))
    flags = AutoscaleOptions.flag_values(args)
    flags["pools"] = getattr(args, "pools", None)
    settings = autoscale_settings(flags, config, need_owner=need_owner)
    gha.add_mask(settings.token)
    return settings


def cmd_autoscale(args: argparse.Namespace) -> int:
    from fleetci.autoscale import GitHubRunnerAutoscaler

    scaler = GitHubRunnerAutoscaler(settings=_settings(args))
    try:
        if args.once:
            with scaler.signals_handled():  # SIGTERM/SIGINT: no scale command left half-run
                decisions = scaler.once()
            rows = [
                [d.pool.name, str(d.queued), str(d.busy), str(d.current), str(d.desired)] for d in decisions
            ]
            gha.append_step_summary(
                "### fleetci autoscale\n\n"
                + gha.markdown_table(["pool", "queued", "busy", "current", "desired"], rows)
                + "".join(f"\n- error: {e}" for e in scaler.last.errors)
            )
            return 1 if scaler.last.errors else 0
        scaler.run()
        return 0
    finally:
        scaler.close()


def cmd_service(args: argparse.Namespace) -> int:
    from fleetci.autoscale import service

    settings = _settings(args)
    root = Path(args.root)
    if args.action == "install":
        done = service.install(settings, root)
        print(f"wrote {done.unit} and {done.env_file}")
        if done.enabled:
            print(f"enabled and started {done.name}")
        else:
            print(f"enabling was skipped ({done.note}): run 'systemctl enable --now {done.name}'")
        for note in done.notes:
            print(f"note: {note}")
        return 0
    if args.action == "uninstall":
        for path in service.uninstall(settings.owner, root):
            print(f"removed {path}")
        return 0
    return 0 if service.status(settings.owner, root) else 1
