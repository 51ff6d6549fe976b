"""The seed's verbs: gh-list, gitlab-list, xref, download, prepare, push, clean, daemon, retag.

Local layout per image tag (``<downloads>/<image-tag>/``): ``artifacts/*.zip`` (as GitHub sent them),
``metadata.json``, ``extracted/*.tar``, ``upload-plan.json`` and ``push-state.json``. Nothing there is
deleted unless ``clean`` finds every image of the plan verified in the registry.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetci import gha
from fleetci.errors import FleetciError, UsageError
from fleetci.files import ensure_private_dir, read_json, write_json
from fleetci.registry.archive import DockerArchive, verify_image
from fleetci.registry.engine_oci import oci_push
from fleetci.registry.extract import docker_archives
from fleetci.registry.github import BuildRun, GitHubSide
from fleetci.registry.gitlab import GitLabAPI, GitLabRepository
from fleetci.registry.index import index_refs, push_index
from fleetci.registry.oci import RegistryClient
from fleetci.registry.plan import (
    META_FILE,
    PLAN_FILE,
    STATE_FILE,
    PlannedImage,
    PushRow,
    UploadPlan,
    load_plan,
)
from fleetci.registry.settings import RegistrySettings
from fleetci.registry.state import DaemonState, PushState, TagEntry, exclusive_lock
from fleetci.registry.tags import check_repository, check_tag, image_name, map_tag

__all__ = ["META_FILE", "PLAN_FILE", "STATE_FILE", "PushRow", "UploadPlan"]

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(f"registry: {message}", file=sys.stderr, flush=True)


def tag_dir(settings: RegistrySettings, image_tag: str) -> Path:
    map_tag(image_tag)  # rejects path tricks and tags without a platform suffix
    return settings.downloads_dir / image_tag


def private_tag_dir(settings: RegistrySettings, image_tag: str) -> Path:
    """The tag's directory, 0700 (it holds the images and the upload sessions of the push state).

    The downloads root is made 0700 only when we create it: an existing one may be the user's own.
    """
    directory = tag_dir(settings, image_tag)
    if not settings.downloads_dir.exists():
        ensure_private_dir(settings.downloads_dir)
    return ensure_private_dir(directory)


def confirm(question: str, yes: bool) -> None:
    """Interactive confirmation; without a terminal the caller must pass --yes (nothing ever hangs)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question.rstrip('?')} needs --yes when not run interactively")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise FleetciError("cancelled; nothing was changed")


# -- listing and cross-referencing ------------------------------------------------------------------------


def gh_list(settings: RegistrySettings, log: Log = stderr_log) -> list[BuildRun]:
    gh = GitHubSide(settings, log)
    try:
        return gh.runs()
    finally:
        gh.close()


def gitlab_list(settings: RegistrySettings) -> list[GitLabRepository]:
    api = GitLabAPI(settings)
    try:
        return api.repositories()
    finally:
        api.close()


def latest_by_tag(runs: list[BuildRun]) -> dict[str, BuildRun]:
    """For a tag built twice, the most recent successful run wins (seed rule)."""
    best: dict[str, BuildRun] = {}
    for run in runs:
        tag = run.image_tag
        if not tag or run.conclusion != "success":
            continue
        if tag not in best or (run.created_at, run.run_id) > (best[tag].created_at, best[tag].run_id):
            best[tag] = run
    return best


@dataclass
class Xref:
    missing: list[BuildRun] = field(default_factory=list)
    present: list[BuildRun] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    unmapped: list[BuildRun] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        """``xref --json``: image tags (and ``repository:tag`` for the extra ones)."""
        return {
            "missing": [r.image_tag or "" for r in self.missing],
            "present": [r.image_tag or "" for r in self.present],
            "extra": self.extra,
            "unmapped": [r.image_tag or "" for r in self.unmapped],
        }


def xref(settings: RegistrySettings, list_extra: bool = False, log: Log = stderr_log) -> Xref:
    runs = gh_list(settings, log)
    repos = gitlab_list(settings)
    have = {(r.name, t) for r in repos for t in r.tags}
    by_arch: dict[tuple[str, str], set[str]] = {}
    for r in repos:
        arch, _, image = r.name.partition("/")
        for t in r.tags:
            by_arch.setdefault((arch, t), set()).add(image)
    result = Xref()
    wanted: set[tuple[str, str]] = set()
    for tag, run in sorted(latest_by_tag(runs).items(), key=lambda kv: (kv[1].created_at, kv[0])):
        try:
            m = map_tag(tag)
        except FleetciError:
            result.unmapped.append(run)
            continue
        wanted.add((m.arch_dir, m.gitlab_tag))
        images = [i.strip() for i in run.metadata.get("images", "").split(",") if i.strip()]
        if images:
            ok = all((m.repository(i), m.gitlab_tag) in have for i in images)
        else:
            ok = bool(by_arch.get((m.arch_dir, m.gitlab_tag)))
        (result.present if ok else result.missing).append(run)
    if list_extra:
        for r in repos:
            arch = r.name.partition("/")[0]
            if arch not in ("x86", "arm"):
                continue
            result.extra += [f"{r.name}:{t}" for t in r.tags if t != "latest" and (arch, t) not in wanted]
    return result


# -- download and prepare ---------------------------------------------------------------------------------


def download(settings: RegistrySettings, image_tag: str, force: bool = False, log: Log = stderr_log) -> Path:
    """Fetch the image artifact(s) of the newest successful run that built ``image_tag``."""
    directory = tag_dir(settings, image_tag)
    gh = GitHubSide(settings, log)
    try:
        run = latest_by_tag(gh.runs(successful_only=True)).get(image_tag)
        if run is None:
            raise FleetciError(
                f"no successful run of {settings.workflow_file} in {settings.repo} built {image_tag} "
                f"(looked at the last {settings.limit} runs)"
            )
        images = [a for a in run.artifacts if "metadata" not in a.name.lower()]
        if not images:
            raise FleetciError(f"run {run.run_id} built {image_tag} but has no image artifact")
        private_tag_dir(settings, image_tag)
        for art in images:
            dest = directory / "artifacts" / f"{art.name}.zip"
            if dest.is_file() and dest.stat().st_size == art.size and not force:
                log(f"{dest} already downloaded ({art.size / 1e6:.1f} MB); --force downloads again")
                continue
            log(f"downloading artifact {art.name} of run {run.run_id} ({art.size / 1e6:.1f} MB)")
            gh.download(art, dest)
    finally:
        gh.close()
    m = map_tag(image_tag)
    write_json(
        directory / META_FILE,
        {
            "image_tag": image_tag,
            "gitlab_tag": m.gitlab_tag,
            "arch_dir": m.arch_dir,
            "run": run.to_json(),
            "downloaded_at": int(time.time()),
        },
    )
    return directory


def prepare(
    settings: RegistrySettings, image_tag: str, clean: bool = False, log: Log = stderr_log
) -> UploadPlan:
    """Extract the artifact, verify every tarball's blobs against their digests, write upload-plan.json."""
    directory = tag_dir(settings, image_tag)
    meta = read_json(directory / META_FILE, "metadata (run 'fleetci registry download' first):")
    zips = sorted((directory / "artifacts").glob("*.zip"))
    if not zips:
        raise FleetciError(f"no downloaded artifact in {directory / 'artifacts'}; run download first")
    extracted = directory / "extracted"
    if clean and extracted.exists():
        shutil.rmtree(extracted)
    private_tag_dir(settings, image_tag)
    ensure_private_dir(extracted)
    archives = docker_archives(zips, extracted, log)
    if not archives:
        raise FleetciError(f"the artifact of {image_tag} holds no docker save archive")
    m = map_tag(image_tag)
    images: list[PlannedImage] = []
    seen: set[str] = set()
    for path in sorted(archives):
        archive = DockerArchive(path)
        for image in archive.images():
            image = verify_image(archive, image, log)
            if not image.repo_tags:
                raise FleetciError(f"{path.name} holds an image without a tag (RepoTags is empty)")
            for repo_tag in image.repo_tags:
                repository = m.repository(image_name(repo_tag))
                if repository in seen:
                    continue
                seen.add(repository)
                images.append(
                    PlannedImage(
                        tarball=str(path.relative_to(directory)),
                        tarball_size=path.stat().st_size,
                        source=repo_tag,
                        repository=repository,
                        tag=m.gitlab_tag,
                        manifest=image.manifest.decode(),
                        manifest_media_type=image.media_type,
                        manifest_digest=image.manifest_digest,
                        config_digest=image.config.digest,
                        blobs=tuple(image.blobs),
                        size=image.size,
                    )
                )
                log(f"plan {repo_tag} -> {repository}:{m.gitlab_tag} ({image.size / 1e6:.1f} MB)")
    run_id = (meta.get("run") or {}).get("run_id") if isinstance(meta, dict) else None
    plan = UploadPlan(
        image_tag=image_tag,
        gitlab_tag=m.gitlab_tag,
        arch_dir=m.arch_dir,
        run_id=run_id if isinstance(run_id, int) and not isinstance(run_id, bool) else None,
        images=tuple(images),
    )
    write_json(directory / PLAN_FILE, plan.to_json())
    return plan


# -- push, retag, clean -----------------------------------------------------------------------------------


def push(
    settings: RegistrySettings,
    image_tag: str,
    *,
    force: bool = False,
    retag_as_latest: bool = False,
    yes: bool = False,
    verbose: bool = False,
    skip_login: bool = False,
    log: Log = stderr_log,
) -> list[PushRow]:
    directory = tag_dir(settings, image_tag)
    check_repository(settings.registry_project, "--registry-project")
    plan = load_plan(directory)
    indexes = index_refs(plan, settings.index) if settings.index else []
    confirm(
        f"push {len(plan.images)} image(s) of {image_tag} to "
        f"{settings.registry_host}/{settings.registry_project}?",
        yes,
    )
    engine = oci_push
    if settings.engine == "docker":
        from fleetci.registry.engine_docker import docker_push as engine
    with _sigterm_as_interrupt():
        rows = engine(
            settings,
            directory,
            plan,
            force=force,
            retag_as_latest=retag_as_latest,
            verbose=verbose,
            skip_login=skip_login,
            log=log,
        )
    if indexes:
        with RegistryClient.from_settings(settings, skip_login, log if verbose else None) as client:
            state = PushState(directory / STATE_FILE)  # what the engine pushed or found identical
            for ref in indexes:
                own = f"{settings.registry_project}/{plan.arch_dir}/{ref.image}:{plan.gitlab_tag}"
                verified = state.verified(own)
                digest = push_index(client, settings.registry_project, plan, ref, log, verified or "")
                result = f"index {digest[:19]}" if digest else f"index skipped: {own} not pushed by this sync"
                rows.append(PushRow(f"{settings.registry_project}/{ref}", result))
    _summary(f"fleetci registry push {image_tag}", rows)
    return rows


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job) stops a push as Ctrl-C does: queued uploads cancelled, those in
    flight stopped before their next chunk with their sessions saved. Only where SIGTERM would kill the
    process anyway (the main thread, no handler installed: the daemon keeps its own)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _summary(title: str, rows: list[PushRow]) -> None:
    table = gha.markdown_table(
        ["image", "result", "MB sent", "MB/s", "blobs"],
        [
            [
                r.ref,
                r.result,
                f"{r.bytes_sent / 1e6:.1f}",
                f"{r.bytes_sent / 1e6 / r.seconds:.1f}" if r.seconds > 0 else "-",
                ", ".join(f"{k} {v}" for k, v in sorted(r.blobs.items())) or "-",
            ]
            for r in rows
        ],
    )
    gha.append_step_summary(f"### {title}\n\n{table}")


def parse_ref(text: str, default_repo: str | None = None) -> tuple[str, str]:
    """``x86/img:tag`` -> (``x86/img``, ``tag``); a bare ``tag`` uses ``default_repo``."""
    repo, sep, tag = text.rpartition(":")
    if not sep and default_repo is not None and text and "/" not in text:
        return default_repo, check_tag(text)
    if not sep or "/" in tag:
        raise UsageError(f"expected REPOSITORY:TAG, got {text!r}")
    if not repo:
        if default_repo is None:
            raise UsageError(f"expected REPOSITORY:TAG, got {text!r}")
        repo = default_repo
    return check_repository(repo.strip("/")), check_tag(tag)


@dataclass(frozen=True)
class RetagResult:
    source: str  # project/repository:tag
    target: str
    digest: str
    blob_bytes_sent: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def retag(
    settings: RegistrySettings, source: str, target: str, skip_login: bool = False, log: Log = stderr_log
) -> RetagResult:
    """Point ``target`` at ``source``'s manifest: manifest GET + PUT (mounts across repositories)."""
    src_repo, src_tag = parse_ref(source)
    dst_repo, dst_tag = parse_ref(target, default_repo=src_repo)
    project = check_repository(settings.registry_project, "--registry-project")
    full_src, full_dst = f"{project}/{src_repo}", f"{project}/{dst_repo}"
    with RegistryClient.from_settings(settings, skip_login, log) as client:
        got = client.get_manifest(full_src, src_tag)
        if got is None:
            raise FleetciError(f"{settings.registry_host}/{full_src}:{src_tag} does not exist")
        data, media_type, digest = got
        if full_src != full_dst:
            doc = json.loads(data)
            for desc in [doc.get("config"), *(doc.get("layers") or [])]:
                if isinstance(desc, dict):
                    blob_digest = str(desc["digest"])
                    if not client.mount_blob(full_dst, blob_digest, full_src):
                        raise FleetciError(f"registry would not mount {blob_digest[:19]} from {full_src}")
        new_digest = client.put_manifest(full_dst, dst_tag, data, media_type)
        result = RetagResult(
            source=f"{full_src}:{src_tag}",
            target=f"{full_dst}:{dst_tag}",
            digest=new_digest or digest,
            blob_bytes_sent=client.counters.blob_bytes_sent,
        )
    log(f"{result.target} -> {result.digest} ({result.blob_bytes_sent} blob bytes sent)")
    return result


def clean(settings: RegistrySettings, image_tag: str, yes: bool = False, log: Log = stderr_log) -> int:
    """Delete the local files of ``image_tag`` only when every planned image was verified pushed."""
    directory = tag_dir(settings, image_tag)
    if not directory.exists():
        raise FleetciError(f"nothing to clean: {directory} does not exist")
    if not (directory / PLAN_FILE).exists():
        raise FleetciError(f"not cleaning {directory}: it was never prepared and pushed (nothing deleted)")
    plan = load_plan(directory)
    state = PushState(directory / STATE_FILE)
    for img in plan.images:
        ref = f"{settings.registry_project}/{img.repository}:{img.tag}"
        if state.verified(ref) is None:
            raise FleetciError(
                f"not cleaning {directory}: {ref} is not verified in the registry; "
                "push first (nothing deleted)"
            )
    confirm(f"delete {directory}?", yes)
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    shutil.rmtree(directory)
    log(f"removed {directory} ({size / 1e6:.1f} MB)")
    return size


# -- daemon -----------------------------------------------------------------------------------------------


def daemon(
    settings: RegistrySettings,
    *,
    interval: float = 900.0,
    once: bool = False,
    force_push: bool = False,
    retag_as_latest: bool = False,
    skip_login: bool = False,
    verbose: bool = False,
    log: Log = stderr_log,
) -> DaemonState:
    """xref -> download -> prepare -> push -> clean for every missing tag, every ``interval`` seconds."""
    root = settings.downloads_dir
    check_repository(settings.registry_project, "--registry-project")
    ensure_private_dir(root)  # holds the daemon's state and lock, and every tag's images
    state_path = root / "daemon-state.json"
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log(f"signal {signum}: stopping after the current step")
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        with exclusive_lock(root / "daemon.lock"):
            state = DaemonState.load(state_path, log)
            while True:
                failures = _cycle(
                    settings, state, force_push, retag_as_latest, skip_login, verbose, log, stop
                )
                state.cycles += 1
                state.last_cycle = int(time.time())
                state.save(state_path)
                if once or stop.is_set():
                    if failures:
                        tag, error = failures[0]
                        raise FleetciError(f"{len(failures)} tag(s) failed this cycle; {tag}: {error}")
                    return state
                log(f"sleeping {interval:g}s")
                if stop.wait(interval):
                    return state
    finally:
        if previous is not None:  # a caller in this process (a test, a library user) gets its handler back
            signal.signal(signal.SIGTERM, previous)


def _cycle(
    settings: RegistrySettings,
    state: DaemonState,
    force_push: bool,
    retag_as_latest: bool,
    skip_login: bool,
    verbose: bool,
    log: Log,
    stop: threading.Event,
) -> list[tuple[str, str]]:
    x = xref(settings, log=log)
    todo = x.missing + (x.present if force_push else [])
    log(f"{len(x.missing)} tag(s) missing in GitLab, {len(x.present)} present")
    failures: list[tuple[str, str]] = []
    for run in todo:
        if stop.is_set():
            break
        tag = str(run.image_tag)
        entry = state.tags.setdefault(tag, TagEntry())
        entry.run_id, entry.started_at = run.run_id, int(time.time())
        try:
            download(settings, tag, log=log)
            prepare(settings, tag, log=log)
            push(
                settings,
                tag,
                force=force_push,
                retag_as_latest=retag_as_latest,
                yes=True,
                verbose=verbose,
                skip_login=skip_login,
                log=log,
            )
            clean(settings, tag, yes=True, log=log)
            entry.status, entry.error, entry.finished_at = "pushed", None, int(time.time())
        except FleetciError as exc:
            entry.status, entry.error, entry.finished_at = "failed", str(exc), int(time.time())
            failures.append((tag, str(exc)))
            log(f"{tag} failed (kept its files for the next cycle): {exc}")
    return failures
