"""``fleetci build tree|master|worker|submit|status|remove|verify|log``, mapped to fleetci.buildfarm."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fleetci import gha
from fleetci.buildfarm.recipe import MAX_PARTITIONS, NAME_RE, parse_partitions
from fleetci.buildfarm.settings import ClientOptions, ClientSettings, MasterOptions, WorkerOptions
from fleetci.cli.args import arg_type
from fleetci.config import load_config_file, parse_positive_int, parse_timeout

PARTITIONS = arg_type(parse_partitions)
COUNT = arg_type(parse_positive_int)  # numbers as the settings parse them: no nan/inf/negatives
TIMEOUT = arg_type(parse_timeout)
SETTINGS = "settings (flag > environment > config file > default)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("build", help="distributed package builds: a master and self-registering workers")
    verbs = p.add_subparsers(dest="build_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True

    v = verbs.add_parser("tree", help="dependency levels and balanced partitions of recipe directories")
    v.add_argument("dirs", nargs="+", help="package directories, or directories holding them")
    v.add_argument(
        "--partitions",
        type=PARTITIONS,
        default=1,
        help=f"number of balanced partitions (1; at most {MAX_PARTITIONS})",
    )
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_tree)

    v = verbs.add_parser("master", help="run the build master (web service) in the foreground")
    MasterOptions.add_flags(v.add_argument_group(SETTINGS))
    v.set_defaults(func=cmd_master)

    v = verbs.add_parser("worker", help="register with a master and build its jobs until stopped")
    WorkerOptions.add_flags(v.add_argument_group(SETTINGS))
    v.set_defaults(func=cmd_worker)

    v = verbs.add_parser("submit", help="queue recipe directories for building")
    ClientOptions.add_flags(v)
    v.add_argument("dirs", nargs="+", help="package directories, or directories holding them")
    v.add_argument("--wait", action="store_true", help="wait until the build finishes")
    v.add_argument("--timeout", type=TIMEOUT, default=3600.0, help="seconds to wait with --wait (3600)")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--summary", action="store_true", help="append a table to $GITHUB_STEP_SUMMARY")
    v.set_defaults(func=cmd_submit)

    v = verbs.add_parser("status", help="workers, jobs and the repository of a master")
    ClientOptions.add_flags(v)
    v.add_argument("--build", type=COUNT, help="one build's jobs")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_status)

    v = verbs.add_parser("remove", help="remove packages from the repository (one step)")
    ClientOptions.add_flags(v)
    v.add_argument("names", nargs="+", type=_package_name, help="package names")
    v.add_argument("--force", action="store_true", help="even when other packages depend on them")
    v.set_defaults(func=cmd_remove)

    v = verbs.add_parser("verify", help="verify the signed index, digests and worker signatures")
    ClientOptions.add_flags(v)
    v.add_argument("--master-key", help="pin the master's ed25519 public key (base64)")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_verify)

    v = verbs.add_parser("log", help="print a job's build log")
    ClientOptions.add_flags(v)
    v.add_argument("job", type=COUNT, help="job id")
    v.set_defaults(func=cmd_log)


def _package_name(text: str) -> str:
    if not NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a package name ({NAME_RE.pattern})")
    return text


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return load_config_file(getattr(args, "config", None))


def _client_settings(args: argparse.Namespace, need_token: bool = True) -> ClientSettings:
    from fleetci.buildfarm.settings import client_settings

    settings = client_settings(ClientOptions.flag_values(args), _config(args), need_token=need_token)
    gha.add_mask(settings.token)
    return settings


def _print_json(data: Any, sort_keys: bool = True) -> None:
    print(json.dumps(data, sort_keys=sort_keys))


def cmd_tree(args: argparse.Namespace) -> int:
    from fleetci.buildfarm import report
    from fleetci.buildfarm.recipe import discover, plan

    p = plan(discover(args.dirs), args.partitions)
    if args.json:
        _print_json(p.to_json(), sort_keys=False)
    else:
        print(report.plan(p))
    return 0


def cmd_master(args: argparse.Namespace) -> int:
    from fleetci.buildfarm.master import run
    from fleetci.buildfarm.settings import master_settings

    return run(master_settings(MasterOptions.flag_values(args), _config(args)))


def cmd_worker(args: argparse.Namespace) -> int:
    from fleetci.buildfarm.settings import worker_settings
    from fleetci.buildfarm.worker import run

    return run(worker_settings(WorkerOptions.flag_values(args), _config(args)))


def cmd_submit(args: argparse.Namespace) -> int:
    from fleetci.buildfarm import report
    from fleetci.buildfarm.client import MasterApi, submit
    from fleetci.buildfarm.models import Queued
    from fleetci.buildfarm.recipe import discover

    def queued(q: Queued) -> None:
        gha.set_output("build-id", str(q["build"]))
        if not args.json:
            print(report.queued(q), flush=True)

    recipes = discover(args.dirs)
    with MasterApi.of(_client_settings(args)) as api:
        done = submit(
            api,
            recipes,
            wait=args.wait,
            timeout=args.timeout,
            queued=queued,
            progress=lambda info: print(report.progress(info), file=sys.stderr, flush=True),
        )
    if args.summary:
        gha.append_step_summary(report.summary(done.build, done.state, done.jobs))
    if args.json:
        _print_json(done.to_json())
    elif args.wait:
        print(report.jobs_table(done.jobs))
    done.check()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fleetci.buildfarm import report
    from fleetci.buildfarm.client import MasterApi

    data: object
    with MasterApi.of(_client_settings(args)) as api:
        if args.build is not None:
            info = api.build(args.build)
            data, text = info, report.build(info)
        else:
            status = api.status()
            data, text = status, report.status(status)
    print(json.dumps(data, sort_keys=True) if args.json else text)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from fleetci.buildfarm.client import MasterApi

    with MasterApi.of(_client_settings(args)) as api:
        for name in args.names:
            r = api.remove(name, args.force)
            cancelled = f"; cancelled jobs {r['cancelled_jobs']}" if r["cancelled_jobs"] else ""
            print(f"removed {name}{cancelled}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fleetci.buildfarm import report
    from fleetci.buildfarm.client import verify_repository

    result = verify_repository(_client_settings(args, need_token=False).master, args.master_key)
    if args.json:
        _print_json({k: v for k, v in result.items() if k != "index"})
    else:
        print(report.verified(result))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from fleetci.buildfarm.client import MasterApi

    with MasterApi.of(_client_settings(args)) as api:
        sys.stdout.write(api.log(args.job))
    return 0
