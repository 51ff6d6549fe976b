"""``fleetci registry <verb>``: the seed's gh_gitlab_sync.py verbs, mapped to fleetci.registry.sync."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fleetci import gha
from fleetci.cli.args import arg_type
from fleetci.config import load_config_file, parse_timeout
from fleetci.registry.settings import (
    GITHUB_FLAGS,
    GITLAB_FLAGS,
    PUSH_FLAGS,
    RegistryOptions,
    RegistrySettings,
    registry_settings,
)

TIMEOUT = arg_type(parse_timeout)  # as the settings parse numbers: no nan/inf/zero


def _github_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GitHub (flag > environment > config file > default)")
    RegistryOptions.add_flags(g, GITHUB_FLAGS)


def _gitlab_flags(p: argparse.ArgumentParser) -> None:
    RegistryOptions.add_flags(p.add_argument_group("GitLab and registry"), GITLAB_FLAGS)


def _dir_flag(p: argparse.ArgumentParser, name: str = "--downloads-dir") -> None:
    """``--downloads-dir`` (``download`` spells it ``--output-dir``, as the seed did)."""
    p.add_argument(name, dest="downloads_dir", help=RegistryOptions.downloads_dir.flag_help())


def settings_from(args: argparse.Namespace) -> RegistrySettings:
    config = load_config_file(getattr(args, "config", None))
    settings = registry_settings(RegistryOptions.flag_values(args), config)
    for secret in settings.secrets():
        gha.add_mask(secret)
    return settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("registry", help="sync CI-built images from GitHub artifacts to a GitLab registry")
    verbs = p.add_subparsers(dest="registry_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True

    v = verbs.add_parser("gh-list", help="recent workflow runs with their metadata block")
    _github_flags(v)
    v.add_argument("--json", action="store_true", help="print one JSON array")
    v.set_defaults(func=cmd_gh_list)

    v = verbs.add_parser("gitlab-list", help="repositories and tags in the GitLab registry")
    _gitlab_flags(v)
    v.add_argument("--json", action="store_true", help="print one JSON array")
    v.set_defaults(func=cmd_gitlab_list)

    v = verbs.add_parser("xref", help="GitHub builds missing from GitLab (and extra GitLab tags)")
    _github_flags(v)
    _gitlab_flags(v)
    v.add_argument("--list-extra", action="store_true", help="also list GitLab tags with no GitHub run")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_xref)

    v = verbs.add_parser("download", help="download the artifact of an image tag (+ metadata.json)")
    v.add_argument("image_tag", help="GitHub image tag, e.g. presto-<sha>-velox-<sha>-linux-amd64")
    _github_flags(v)
    _dir_flag(v, "--output-dir")
    v.add_argument("--force", action="store_true", help="download again even when present")
    v.set_defaults(func=cmd_download)

    v = verbs.add_parser("prepare", help="extract, verify tarballs and write upload-plan.json")
    v.add_argument("image_tag")
    _dir_flag(v)
    v.add_argument("--clean", action="store_true", help="remove a previous extraction first")
    v.set_defaults(func=cmd_prepare)

    v = verbs.add_parser("push", help="push the prepared images to the registry")
    v.add_argument("image_tag")
    _gitlab_flags(v)
    _dir_flag(v)
    _push_flags(v)
    v.add_argument("--force", action="store_true", help="push even when the tag already exists")
    v.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    v.set_defaults(func=cmd_push)

    v = verbs.add_parser("clean", help="delete local files of a tag once its images are verified pushed")
    v.add_argument("image_tag")
    _gitlab_flags(v)
    _dir_flag(v)
    v.add_argument("--gh-token", help=argparse.SUPPRESS)
    v.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    v.set_defaults(func=cmd_clean)

    v = verbs.add_parser("daemon", help="xref -> download -> prepare -> push -> clean, periodically")
    _github_flags(v)
    _gitlab_flags(v)
    _dir_flag(v)
    _push_flags(v)
    v.add_argument("--interval", type=TIMEOUT, default=900.0, help="seconds between cycles (900)")
    v.add_argument("--once", action="store_true", help="run one cycle and exit (non-zero if a tag failed)")
    v.add_argument("--force-push", action="store_true", help="push tags even when already present")
    v.set_defaults(func=cmd_daemon)

    v = verbs.add_parser("retag", help="point a new tag at an existing manifest (no layer upload)")
    v.add_argument(
        "source", help="REPOSITORY:TAG inside the registry project, e.g. x86/presto-coordinator:TAG"
    )
    v.add_argument("target", help="REPOSITORY:TAG or just TAG (same repository)")
    _gitlab_flags(v)
    v.add_argument("--skip-login", action="store_true", help="send no registry credentials")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_retag)


def _push_flags(v: argparse.ArgumentParser) -> None:
    RegistryOptions.add_flags(v.add_argument_group("push"), PUSH_FLAGS)
    v.add_argument("--retag-as-latest", action="store_true", help="also point <repo>:latest at the image")
    v.add_argument(
        "--verbose", "-v", action="store_true", help="per-blob and per-request detail (no secrets)"
    )
    v.add_argument(
        "--skip-login", action="store_true", help="send no registry credentials / skip docker login"
    )


def _print_json(data: Any) -> None:
    print(json.dumps(data, sort_keys=True, default=str))


def cmd_gh_list(args: argparse.Namespace) -> int:
    from fleetci.registry.sync import gh_list

    runs = gh_list(settings_from(args))
    if args.json:
        _print_json([r.to_json() for r in runs])
        return 0
    for r in runs:
        print(f"run {r.run_id} #{r.run_number} {r.created_at} {r.branch} {r.status}/{r.conclusion or '-'}")
        if r.metadata:
            print(f"  metadata ({r.metadata_source}):")
            for k, val in sorted(r.metadata.items()):
                print(f"    {k.replace('_', ' ').capitalize()}: {val}")
    return 0


def cmd_gitlab_list(args: argparse.Namespace) -> int:
    from fleetci.registry.sync import gitlab_list

    repos = gitlab_list(settings_from(args))
    if args.json:
        _print_json([r.to_json() for r in repos])
        return 0
    for r in repos:
        print(f"{r.location} ({len(r.tags)} tags)")
        for t in r.tags:
            print(f"  {t}")
    return 0


def cmd_xref(args: argparse.Namespace) -> int:
    from fleetci.registry.sync import xref

    x = xref(settings_from(args), list_extra=args.list_extra)
    if args.json:
        _print_json(x.to_json())
        return 0
    print(f"missing in GitLab ({len(x.missing)}):")
    for r in x.missing:
        print(f"  {r.image_tag}  (run {r.run_id}, {r.created_at})")
    print(f"present ({len(x.present)}):")
    for r in x.present:
        print(f"  {r.image_tag}")
    if args.list_extra:
        print(f"extra in GitLab ({len(x.extra)}):")
        for e in x.extra:
            print(f"  {e}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from fleetci.registry.sync import download

    directory = download(settings_from(args), args.image_tag, force=args.force)
    print(f"downloaded {args.image_tag} to {directory}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from fleetci.registry.sync import PLAN_FILE, prepare, tag_dir

    settings = settings_from(args)
    plan = prepare(settings, args.image_tag, clean=args.clean)
    for img in plan.images:
        # the config digest: the manifest's depends on --compression, known only once pushed
        print(f"{img.source} -> {img.repository}:{img.tag} image {img.config_digest}")
    print(f"wrote {tag_dir(settings, args.image_tag) / PLAN_FILE}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from fleetci.registry.sync import push

    settings = settings_from(args)
    rows = push(
        settings,
        args.image_tag,
        force=args.force,
        retag_as_latest=args.retag_as_latest,
        yes=args.yes,
        verbose=args.verbose,
        skip_login=args.skip_login,
    )
    for r in rows:
        print(f"{settings.registry_host}/{r.ref} {r.result} ({r.bytes_sent} blob bytes sent)")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from fleetci.registry.sync import clean

    size = clean(settings_from(args), args.image_tag, yes=args.yes)
    print(f"cleaned {args.image_tag} ({size} bytes)")
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from fleetci.registry.sync import daemon

    state = daemon(
        settings_from(args),
        interval=args.interval,
        once=args.once,
        force_push=args.force_push,
        retag_as_latest=args.retag_as_latest,
        skip_login=args.skip_login,
        verbose=args.verbose,
    )
    print(f"daemon: {state.cycles} cycle(s); pushed: {', '.join(state.pushed()) or 'none'}")
    return 0


def cmd_retag(args: argparse.Namespace) -> int:
    from fleetci.registry.sync import retag

    result = retag(settings_from(args), args.source, args.target, skip_login=args.skip_login)
    if args.json:
        _print_json(result.to_json())
    else:
        print(f"{result.target} -> {result.digest} ({result.blob_bytes_sent} blob bytes sent)")
    return 0
