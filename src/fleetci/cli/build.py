"""``fleetci build tree|master|worker|submit|status|remove|verify|log``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fleetci import gha
from fleetci.buildfarm.recipe import MAX_PARTITIONS, parse_partitions
from fleetci.buildfarm.settings import ClientOptions, MasterOptions, WorkerOptions
from fleetci.cli import arg_type
from fleetci.config import load_config_file, parse_positive_int, parse_timeout

PARTITIONS = arg_type(parse_partitions)
COUNT = arg_type(parse_positive_int)  # numbers as the settings parse them: no nan/inf/negatives
TIMEOUT = arg_type(parse_timeout)
SETTINGS = "settings (flag > environment > config file > default)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("build", help="distributed package builds: a master and self-registering workers")
    verbs = p.add_subparsers(dest="build_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True

    tree = verbs.add_parser("tree", help="dependency levels and balanced partitions of recipe directories")
    tree.add_argument("dirs", nargs="+", help="package directories, or directories holding them")
    tree.add_argument(
        "--partitions",
        type=PARTITIONS,
        default=1,
        help=f"number of balanced partitions (1; at most {MAX_PARTITIONS})",
    )
    tree.add_argument("--json", action="store_true", help="print one JSON object")
    tree.set_defaults(func=cmd_tree)

    master = verbs.add_parser("master", help="run the build master (web service) in the foreground")
    MasterOptions.add_flags(master.add_argument_group(SETTINGS))
    master.set_defaults(func=cmd_master)

    worker = verbs.add_parser("worker", help="register with a master and build its jobs until stopped")
    WorkerOptions.add_flags(worker.add_argument_group(SETTINGS))
    worker.set_defaults(func=cmd_worker)

    submit = verbs.add_parser("submit", help="queue recipe directories for building")
    _master_flag(submit)
    submit.add_argument("dirs", nargs="+", help="package directories, or directories holding them")
    submit.add_argument("--wait", action="store_true", help="wait until the build finishes")
    submit.add_argument("--timeout", type=TIMEOUT, default=3600.0, help="seconds to wait with --wait (3600)")
    submit.add_argument("--json", action="store_true", help="print one JSON object")
    submit.add_argument("--summary", action="store_true", help="append a table to $GITHUB_STEP_SUMMARY")
    submit.set_defaults(func=cmd_submit)

    status = verbs.add_parser("status", help="workers, jobs and the repository of a master")
    _master_flag(status)
    status.add_argument("--build", type=COUNT, help="one build's jobs")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=cmd_status)

    remove = verbs.add_parser("remove", help="remove packages from the repository (one step)")
    _master_flag(remove)
    remove.add_argument("names", nargs="+", type=_package_name, help="package names")
    remove.add_argument("--force", action="store_true", help="even when other packages depend on them")
    remove.set_defaults(func=cmd_remove)

    verify = verbs.add_parser("verify", help="verify the signed index, digests and worker signatures")
    _master_flag(verify)
    verify.add_argument("--master-key", help="pin the master's ed25519 public key (base64)")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(func=cmd_verify)

    log = verbs.add_parser("log", help="print a job's build log")
    _master_flag(log)
    log.add_argument("job", type=COUNT, help="job id")
    log.set_defaults(func=cmd_log)


def _package_name(text: str) -> str:
    from fleetci.buildfarm.recipe import NAME_RE

    if not NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a package name ({NAME_RE.pattern})")
    return text


def _master_flag(p: argparse.ArgumentParser) -> None:
    ClientOptions.add_flags(p)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return load_config_file(getattr(args, "config", None))


def _client(args: argparse.Namespace, need_token: bool = True) -> Any:
    from fleetci.buildfarm.client import MasterClient
    from fleetci.buildfarm.settings import client_settings

    settings = client_settings(ClientOptions.flag_values(args), _config(args), need_token=need_token)
    gha.add_mask(settings.token)
    return MasterClient(settings)


def cmd_tree(args: argparse.Namespace) -> int:
    from fleetci.buildfarm.recipe import check_graph, critical_path, discover, levels, partitions

    recipes = discover(args.dirs)
    graph = check_graph(recipes)
    cost = {r.name: r.estimate_s if r.estimate_s is not None else 1.0 for r in recipes}
    lv = levels(graph)
    parts = partitions(graph, args.partitions, cost)
    if args.json:
        print(
            json.dumps(
                {
                    "levels": lv,
                    "partitions": parts,
                    "partition_cost": [round(sum(cost[x] for x in p), 3) for p in parts],
                    "critical_path": critical_path(graph, cost),
                    "total_cost": sum(cost.values()),
                }
            )
        )
        return 0
    for i, names in enumerate(lv):
        print(f"level {i}: {' '.join(names)}")
    for i, names in enumerate(parts, 1):
        load = sum(cost[x] for x in names)
        print(f"partition {i} ({len(names)} packages, cost {load:g}): {' '.join(names) or '-'}")
    return 0


def cmd_master(args: argparse.Namespace) -> int:
    from fleetci.buildfarm.master import run
    from fleetci.buildfarm.settings import master_settings

    return run(master_settings(MasterOptions.flag_values(args), _config(args)))


def cmd_worker(args: argparse.Namespace) -> int:
    from fleetci.buildfarm.settings import worker_settings
    from fleetci.buildfarm.worker import run

    return run(worker_settings(WorkerOptions.flag_values(args), _config(args)))


def _job_rows(jobs: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(j["id"]),
            j["package"],
            f"{j['version']}-{j['release']}",
            j["state"],
            j.get("worker_id") or "-",
            str(j["attempts"]),
            "-" if j.get("duration_s") is None else f"{j['duration_s']:.2f}",
            (j.get("error") or "")[:80],
        ]
        for j in jobs
    ]


JOB_HEADERS = ["job", "package", "version", "state", "worker", "attempts", "seconds", "note"]


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def cmd_submit(args: argparse.Namespace) -> int:
    from fleetci.buildfarm.recipe import discover
    from fleetci.errors import FleetciError

    recipes = discover(args.dirs)
    with _client(args) as client:
        queued = client.submit(recipes)
        build_id = int(queued["build"])
        gha.set_output("build-id", str(build_id))
        if not args.json:
            names = ", ".join(f"{j['package']} {j['version']}-{j['release']}" for j in queued["jobs"])
            print(f"build {build_id} queued: {names}", flush=True)
        result: dict[str, Any] = {"build": build_id, "state": "queued", "jobs": queued["jobs"]}
        if args.wait:

            def progress(info: dict[str, Any]) -> None:
                counts: dict[str, int] = {}
                for j in info["jobs"]:
                    counts[j["state"]] = counts.get(j["state"], 0) + 1
                shown = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                print(f"build {build_id}: {shown}", file=sys.stderr, flush=True)

            result = client.wait(build_id, args.timeout, progress)
    if args.summary:
        rows = _job_rows(result["jobs"]) if args.wait else []
        gha.append_step_summary(
            f"### fleetci build {build_id}: {result['state']}\n\n" + gha.markdown_table(JOB_HEADERS, rows)
        )
    if args.json:
        print(json.dumps(result, sort_keys=True))
    elif args.wait:
        _print_table(JOB_HEADERS, _job_rows(result["jobs"]))
    if args.wait and result["state"] != "done":
        failed = [j["package"] for j in result["jobs"] if j["state"] != "done"]
        raise FleetciError(f"build {build_id} failed: {', '.join(failed)} did not build")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        data = client.build(args.build) if args.build is not None else client.status()
    if args.json:
        print(json.dumps(data, sort_keys=True))
        return 0
    if args.build is not None:
        print(f"build {data['build']}: {data['state']}")
        _print_table(JOB_HEADERS, _job_rows(data["jobs"]))
        return 0
    print(f"workers ({len(data['workers'])}, heartbeat ttl {data['heartbeat_ttl']:g}s):")
    _print_table(
        ["id", "name", "state", "jobs_done"],
        [[w["id"], w["name"], w["state"], str(w["jobs_done"])] for w in data["workers"]],
    )
    print(f"jobs: {', '.join(f'{v} {k}' for k, v in sorted(data['counts'].items())) or 'none'}")
    _print_table(JOB_HEADERS, _job_rows(data["jobs"][:30]))
    print(f"repository ({len(data['repository'])} packages):")
    for name, p in sorted(data["repository"].items()):
        print(f"  {name} {p['version']}-{p['release']} (built by {p['built_by']})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for name in args.names:
            r = client.remove(name, args.force)
            cancelled = f"; cancelled jobs {r['cancelled_jobs']}" if r["cancelled_jobs"] else ""
            print(f"removed {name}{cancelled}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fleetci.buildfarm.client import verify_repository
    from fleetci.buildfarm.settings import client_settings

    settings = client_settings(ClientOptions.flag_values(args), _config(args), need_token=False)
    result = verify_repository(settings.master, args.master_key)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "index"}, sort_keys=True))
    else:
        print(
            f"repository OK: {result['packages']} packages, {result['files']} files;"
            f" index signed by {result['master_key']}"
        )
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    with _client(args) as client:
        sys.stdout.write(client.log(args.job))
    return 0
