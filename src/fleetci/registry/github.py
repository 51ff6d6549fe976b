"""The GitHub side through PyGithub: build runs, their metadata block, and artifact downloads.

PyGithub talks to ``settings.api_url``, which is ``$FLEETCI_API_URL`` when ``fleetci cache start`` runs a
caching proxy on this machine, so polling daemons share one token's rate limit with the rest of the fleet.
"""

from __future__ import annotations

import io
import json
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests
from github import Auth, Github, GithubException

from fleetci.errors import FleetciError, UsageError
from fleetci.files import ensure_private_dir, partial
from fleetci.http import client, describe, redact_url
from fleetci.registry.settings import RegistrySettings
from fleetci.registry.tags import parse_metadata_block

METADATA_FILE = "metadata.json"


@dataclass
class ArtifactInfo:
    id: int
    name: str
    size: int
    url: str
    expired: bool = False


@dataclass
class BuildRun:
    """One workflow run with what the sync needs to know about it."""

    run_id: int
    run_number: int
    head_sha: str
    branch: str
    status: str
    conclusion: str | None
    created_at: str
    html_url: str
    metadata: dict[str, str] = field(default_factory=dict)
    artifacts: list[ArtifactInfo] = field(default_factory=list)
    metadata_source: str = ""

    @property
    def image_tag(self) -> str | None:
        return self.metadata.get("image_tag")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _github_error(exc: Exception, what: str, api_url: str) -> FleetciError:
    if isinstance(exc, GithubException):
        message = ""
        if isinstance(exc.data, dict):
            message = str(exc.data.get("message") or "")
        if exc.status == 401:
            return FleetciError(
                f"GitHub rejected the token while {what} (HTTP 401 {message or 'Bad credentials'})"
            )
        if exc.status == 404:
            return FleetciError(
                f"GitHub: not found while {what} (HTTP 404; check --repo/--workflow and the token's access)"
            )
        return FleetciError(f"GitHub answered HTTP {exc.status} while {what}: {message or exc}")
    return FleetciError(f"GitHub API at {redact_url(api_url)} unreachable while {what}: {describe(exc)}")


NETWORK_ERRORS = (GithubException, requests.exceptions.RequestException)


class GitHubSide:
    """Read build runs, metadata and artifacts of one workflow."""

    def __init__(self, settings: RegistrySettings, log: Callable[[str], None] | None = None) -> None:
        if not settings.gh_token:
            raise UsageError("no GitHub token: pass --gh-token or set GH_TOKEN / GITHUB_TOKEN")
        self.settings = settings
        self.log = log or (lambda _m: None)
        self.token = settings.gh_token
        self.gh = Github(
            base_url=settings.api_url,
            auth=Auth.Token(settings.gh_token),
            timeout=int(settings.timeout),
            retry=2,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )
        self.http = client(timeout=settings.timeout, follow_redirects=False)

    def close(self) -> None:
        self.http.close()
        self.gh.close()

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except NETWORK_ERRORS as exc:
            raise _github_error(exc, what, self.settings.api_url) from exc

    def runs(self, successful_only: bool = False, with_metadata: bool = True) -> list[BuildRun]:
        """Recent runs of the workflow (newest first, at most ``limit``), with their metadata block."""
        s = self.settings

        def fetch() -> list[Any]:
            wf = self.gh.withLazy(True).get_repo(s.repo).get_workflow(s.workflow_file)
            kwargs: dict[str, Any] = {}
            if s.branch:
                kwargs["branch"] = s.branch
            if successful_only:
                kwargs["status"] = "success"
            out = []
            for run in wf.get_runs(**kwargs):
                out.append(run)
                if len(out) >= s.limit:
                    break
            return out

        raw = self._call(f"listing runs of {s.workflow_file} in {s.repo}", fetch)
        runs = []
        for r in raw:
            created = r.created_at.isoformat() if r.created_at else ""
            run = BuildRun(
                run_id=int(r.id),
                run_number=int(r.run_number),
                head_sha=str(r.head_sha),
                branch=str(r.head_branch or ""),
                status=str(r.status),
                conclusion=r.conclusion,
                created_at=created,
                html_url=str(r.html_url),
            )
            if with_metadata and r.status == "completed":
                run.artifacts = self._artifacts(r)
                run.metadata, run.metadata_source = self._metadata(r, run.artifacts)
            runs.append(run)
        return runs

    def _artifacts(self, run: Any) -> list[ArtifactInfo]:
        def fetch() -> list[ArtifactInfo]:
            return [
                ArtifactInfo(
                    int(a.id), str(a.name), int(a.size_in_bytes), str(a.archive_download_url), bool(a.expired)
                )
                for a in run.get_artifacts()
            ]

        result: list[ArtifactInfo] = self._call(f"listing artifacts of run {run.id}", fetch)
        return result

    def _metadata(self, run: Any, artifacts: list[ArtifactInfo]) -> tuple[dict[str, str], str]:
        """metadata.json from a small metadata artifact; else the metadata block in the run's job logs."""
        for art in artifacts:
            if "metadata" in art.name.lower() and art.size < 1024 * 1024 and not art.expired:
                data = self._small_zip(art)
                meta = read_metadata_zip(data)
                if meta:
                    return meta, f"artifact {art.name}"
        jobs = self._call(f"listing jobs of run {run.id}", lambda: list(run.jobs()))
        for job in jobs:
            url = self._call(f"locating the log of job {job.id}", job.logs_url)
            text = self._get_text(url)
            meta = parse_metadata_block(text)
            if meta:
                return meta, f"log of job {job.name}"
        return {}, ""

    def _get_text(self, url: str) -> str:
        try:
            resp = self.http.get(url, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise FleetciError(f"cannot download a job log: {describe(exc)}") from exc
        if resp.status_code != 200:
            raise FleetciError(f"cannot download a job log: HTTP {resp.status_code}")
        return resp.text

    def _small_zip(self, art: ArtifactInfo) -> bytes:
        buf = io.BytesIO()
        for chunk in self._artifact_stream(art):
            buf.write(chunk)
            if buf.tell() > 4 * 1024 * 1024:
                raise FleetciError(f"metadata artifact {art.name} is unexpectedly large")
        return buf.getvalue()

    def _artifact_stream(
        self, art: ArtifactInfo, progress: Callable[[int, int], None] | None = None
    ) -> Iterator[bytes]:
        """GitHub answers a redirect to blob storage; the token must not follow it to another host."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/vnd.github+json"}
        try:
            first = self.http.get(art.url, headers=headers)
            if first.status_code in (301, 302, 303, 307, 308):
                target = first.headers["location"]
                hdrs: dict[str, str] = {}
            elif first.status_code == 200:
                yield first.content
                return
            else:
                raise _artifact_error(first, art)
            with self.http.stream("GET", target, headers=hdrs, follow_redirects=True) as resp:
                if resp.status_code != 200:
                    raise _artifact_error(resp, art)
                total = int(resp.headers.get("content-length") or art.size or 0)
                done = 0
                for chunk in resp.iter_bytes(1024 * 1024):
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                    yield chunk
        except httpx.HTTPError as exc:
            raise FleetciError(f"download of artifact {art.name} failed: {describe(exc)}") from exc

    def download(self, art: ArtifactInfo, dest: Path, quiet: bool = False) -> Path:
        """Stream an artifact zip to ``dest`` (via ``.partial``), printing progress to stderr."""
        if art.expired:
            raise FleetciError(f"artifact {art.name} of this run has expired on GitHub")
        ensure_private_dir(dest.parent)
        started = time.monotonic()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if quiet or (now - last[0] < 2.0 and done != total):
                return
            last[0] = now
            rate = done / max(now - started, 1e-6) / 1e6
            pct = f"{done * 100 / total:5.1f}% " if total else ""
            print(
                f"download {art.name}: {pct}{done / 1e6:.1f}/{total / 1e6:.1f} MB {rate:.1f} MB/s",
                file=sys.stderr,
                flush=True,
            )

        with partial(dest) as tmp:
            with tmp.open("wb") as fh:
                for chunk in self._artifact_stream(art, progress):
                    fh.write(chunk)
            if not zipfile.is_zipfile(tmp):
                raise FleetciError(f"artifact {art.name} is not a valid zip file (download corrupt?)")
        return dest


def _artifact_error(resp: httpx.Response, art: ArtifactInfo) -> FleetciError:
    if resp.status_code == 401:
        return FleetciError(f"GitHub rejected the token while downloading artifact {art.name} (HTTP 401)")
    if resp.status_code == 410:
        return FleetciError(f"artifact {art.name} has expired on GitHub (HTTP 410)")
    return FleetciError(f"download of artifact {art.name} failed: HTTP {resp.status_code}")


def read_metadata_zip(data: bytes) -> dict[str, str]:
    """``metadata.json`` inside a zip -> a flat dict with snake_case keys ({} when absent/invalid)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == METADATA_FILE]
            if not names:
                return {}
            doc = json.loads(zf.read(names[0]))
    except (zipfile.BadZipFile, ValueError, KeyError):
        return {}
    return normalize_metadata(doc)


def normalize_metadata(doc: Any) -> dict[str, str]:
    if not isinstance(doc, dict):
        return {}
    inner: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else doc
    out = {str(k).strip().lower().replace(" ", "_").replace("-", "_"): str(v) for k, v in inner.items()}
    return out if out.get("image_tag") else {}
