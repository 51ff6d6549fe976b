"""``fleetci registry`` settings, described once in :class:`RegistryOptions`.

flag > environment (the seed's names) > config file ``registry:`` > default. The argparse flags of
``fleetci registry …``, the Resolver lookups, the unknown-key check and the docs table all come from
:class:`RegistryOptions`; :func:`registry_settings` turns them into the frozen :class:`RegistrySettings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetci.config import Setting, SettingTable, number, parse_positive_int, parse_timeout
from fleetci.errors import UsageError
from fleetci.http import host_of, redact_url
from fleetci.registry.compress import codec, parse_compression

DEFAULT_REPO = "rapidsai/velox-testing"
DEFAULT_WORKFLOW = ".github/workflows/presto-build-images.yml"
DEFAULT_GITLAB_HOST = "gitlab-master.nvidia.com"
DEFAULT_GITLAB_PROJECT = "hercules/veloxtesting"
DEFAULT_REGISTRY = "gitlab-master.nvidia.com:5005"
DEFAULT_CHUNK_MB = 128
DEFAULT_PARALLEL = 5  # blobs in flight at once, as docker push (max-concurrent-uploads)
# Chunks of up to 1 TiB: chunk_mb * MiB must stay a sane byte count.
parse_chunk_mb = number(int, min=1, max=1024 * 1024)
parse_parallel = number(int, min=1, max=64)
parse_level = number(int, min=0, max=19)
INDEX_FIELDS = ("image", "tag")


def parse_index(text: str) -> str:
    """``NAME:TAG`` of the multi-arch index, ``{image}``/``{tag}`` placeholders allowed; "" = none."""
    raw = text.strip()
    if not raw:
        return ""
    name, sep, tag = raw.rpartition(":")
    if not sep or not name or not tag or "/" in tag:
        raise ValueError(f"expected NAME:TAG (e.g. '{{image}}:{{tag}}'), got {text!r}")
    import string

    for _, field_name, spec, conv in string.Formatter().parse(raw):
        if field_name is not None and (field_name not in INDEX_FIELDS or spec or conv):
            raise ValueError(f"{text!r}: only {{image}} and {{tag}} may be filled in, not {{{field_name}}}")
    return raw


def base_url(text: str, what: str) -> str:
    """``host[:port]`` or a URL -> ``scheme://host[:port][/path]``; loopback hosts default to plain HTTP."""
    raw = text.strip().rstrip("/")
    if not raw:
        raise ValueError(f"{what} is empty")
    if "://" not in raw:
        host = raw.split("/", 1)[0].rsplit(":", 1)[0]
        scheme = "http" if host in ("localhost", "127.0.0.1", "[::1]") else "https"
        raw = f"{scheme}://{raw}"
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} {redact_url(text)!r} is not a host or an http(s) URL")
    return raw


def parse_engine(text: str) -> str:
    low = text.strip().lower()
    if low not in ("oci", "docker"):
        raise ValueError(f"expected 'oci' (no daemon) or 'docker', got {text!r}")
    return low


def parse_repo(text: str) -> str:
    if text.count("/") != 1 or not all(text.split("/")):
        raise ValueError(f"expected OWNER/REPO, got {text!r}")
    return text


@dataclass(frozen=True)
class RegistrySettings:
    """Everything ``fleetci registry …`` needs; secrets are held here and never printed."""

    repo: str = DEFAULT_REPO
    workflow: str = DEFAULT_WORKFLOW
    branch: str | None = None
    limit: int = 20
    gh_token: str | None = None
    api_url: str = "https://api.github.com"
    gitlab_url: str = f"https://{DEFAULT_GITLAB_HOST}"
    gitlab_project: str = DEFAULT_GITLAB_PROJECT
    gitlab_token: str | None = None
    job_token: str | None = None
    registry_url: str = f"https://{DEFAULT_REGISTRY}"
    registry_project: str = DEFAULT_GITLAB_PROJECT
    registry_username: str | None = None
    registry_password: str | None = None
    downloads_dir: Path = Path("downloads")
    engine: str = "oci"
    chunk_size: int = DEFAULT_CHUNK_MB * 1024 * 1024
    docker_host: str | None = None
    timeout: float = 60.0
    compression: str = "gzip"
    compression_level: int = 0  # 0: the codec's default
    parallel: int = DEFAULT_PARALLEL
    index: str = ""  # NAME:TAG template of the multi-arch index; "" = no index

    @property
    def workflow_file(self) -> str:
        """PyGithub and the REST API address a workflow by its file name."""
        return self.workflow.rsplit("/", 1)[-1]

    @property
    def registry_host(self) -> str:
        """``host:port`` as image references spell it (never the URL's userinfo: it is printed)."""
        return host_of(self.registry_url)

    def secrets(self) -> tuple[str, ...]:
        return tuple(
            s
            for s in (self.gh_token, self.gitlab_token, self.job_token, self.registry_password)
            if s is not None and s != ""
        )


class RegistryOptions(SettingTable):
    """Every ``fleetci registry`` setting, described once: flags, environment names, config keys, docs.

    ``CI_JOB_TOKEN`` is not a setting: GitLab CI provides it, and it is only ever read from the environment.
    """

    section = "registry"
    # GitHub
    repo = Setting(DEFAULT_REPO, parse_repo, env=("GH_SYNC_REPO",), help="OWNER/REPO of the build workflow")
    workflow = Setting(DEFAULT_WORKFLOW, str, env=("GH_SYNC_WORKFLOW",), help="workflow file")
    branch = Setting("", str, env=("GH_SYNC_BRANCH",), help="only runs on this branch")
    limit = Setting(20, parse_positive_int, env=("GH_SYNC_LIMIT",), help="runs to inspect")
    gh_token = Setting("", str, env=("GH_TOKEN", "GITHUB_TOKEN"), help="GitHub token")
    api_url = Setting(
        "https://api.github.com",
        str,
        env=("FLEETCI_API_URL", "GITHUB_API_URL"),
        help="GitHub API; a running fleetci cache sets $FLEETCI_API_URL",
    )
    # GitLab and its registry
    gitlab_host = Setting(DEFAULT_GITLAB_HOST, str, env=("GITLAB_HOST",), help="GitLab server, host or URL")
    gitlab_project = Setting(
        DEFAULT_GITLAB_PROJECT, str, env=("GITLAB_PROJECT",), help="project holding the registry"
    )
    gitlab_token = Setting(
        "", str, env=("GITLAB_TOKEN",), help="GitLab token", doc_default="none ($CI_JOB_TOKEN in GitLab CI)"
    )
    registry = Setting(
        DEFAULT_REGISTRY, str, env=("GITLAB_REGISTRY", "CI_REGISTRY"), help="registry host[:port] or URL"
    )
    # None (not ""): an explicit empty value is kept, and refused when the project is checked
    registry_project: Setting[str | None] = Setting(
        None,
        str,
        env=("GITLAB_REGISTRY_PROJECT",),
        help="path prefix in the registry",
        doc_default="the GitLab project",
    )
    registry_username = Setting(
        "",
        str,
        env=("GITLAB_REGISTRY_USERNAME", "CI_REGISTRY_USER"),
        help="registry user",
        doc_default="oauth2 (gitlab-ci-token for $CI_JOB_TOKEN)",
    )
    registry_password = Setting(
        "",
        str,
        env=("GITLAB_REGISTRY_PASSWORD", "CI_REGISTRY_PASSWORD"),
        help="registry password",
        doc_default="the GitLab token, else $CI_JOB_TOKEN",
    )
    engine = Setting("oci", parse_engine, env=("REGISTRY_ENGINE",), help="oci (no daemon) or docker")
    docker_host = Setting("", str, env=("DOCKER_HOST",), help="docker daemon for --engine docker")
    chunk_mb = Setting(
        DEFAULT_CHUNK_MB,
        parse_chunk_mb,
        env=("REGISTRY_CHUNK_MB",),
        help="blobs above this many MiB upload in resumable chunks",
    )
    timeout = Setting(60.0, parse_timeout, env=("REGISTRY_TIMEOUT",), help="network timeout in seconds")
    compression = Setting(
        "gzip",
        parse_compression,
        env=("REGISTRY_COMPRESSION",),
        help="layer compression on push: gzip, zstd (OCI +zstd) or none",
    )
    compression_level = Setting(
        0,
        parse_level,
        env=("REGISTRY_COMPRESSION_LEVEL",),
        help="0 = the codec's default (gzip 3, zstd 3); gzip 1-12, zstd 1-19: CPU against bytes on the link",
    )
    parallel = Setting(
        DEFAULT_PARALLEL,
        parse_parallel,
        env=("REGISTRY_PARALLEL",),
        help="blobs uploaded at once (1-64)",
    )
    index = Setting(
        "",
        parse_index,
        env=("REGISTRY_INDEX",),
        help="also push a multi-arch OCI index NAME:TAG ({image}, {tag} filled in) over x86/ and arm/",
        doc_default="none",
    )
    # local files
    downloads_dir = Setting(
        "downloads", str, env=("GH_SYNC_DOWNLOADS_DIR",), help="where artifacts and sync state go"
    )


GITHUB_FLAGS = ("repo", "workflow", "branch", "limit", "gh_token", "api_url")
GITLAB_FLAGS = (
    "gitlab_host",
    "gitlab_project",
    "gitlab_token",
    "registry",
    "registry_project",
    "registry_username",
    "registry_password",
    "engine",
    "docker_host",
    "chunk_mb",
    "timeout",
)
PUSH_FLAGS = ("compression", "compression_level", "parallel", "index")


def registry_settings(
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> RegistrySettings:
    """Build :class:`RegistrySettings` from flags, the environment and the ``registry:`` config section."""
    environ = os.environ if env is None else env
    o = RegistryOptions
    r = o.resolver(flags, config, environ)
    gitlab_project = r.value(o.gitlab_project).strip("/")
    gitlab_token = r.value(o.gitlab_token) or None
    job_token = environ.get("CI_JOB_TOKEN") or None
    password = r.value(o.registry_password) or gitlab_token or job_token
    username = r.value(o.registry_username)
    if not username and password:
        username = "gitlab-ci-token" if password == job_token else "oauth2"
    registry = r.value(o.registry)
    gitlab_host = r.value(o.gitlab_host)
    api = r.value(o.api_url)
    try:
        registry_url = base_url(registry, "--registry")
        gitlab_url = base_url(gitlab_host, "--gitlab-host")
        api_url = base_url(api, "--api-url")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    chunk_mb = r.value(o.chunk_mb)
    registry_project = r.value(o.registry_project)
    settings = RegistrySettings(
        repo=r.value(o.repo),
        workflow=r.value(o.workflow),
        branch=r.value(o.branch) or None,
        limit=r.value(o.limit),
        gh_token=r.value(o.gh_token) or None,
        api_url=api_url,
        gitlab_url=gitlab_url,
        gitlab_project=gitlab_project,
        gitlab_token=gitlab_token,
        job_token=job_token,
        registry_url=registry_url,
        registry_project=(gitlab_project if registry_project is None else registry_project).strip("/"),
        registry_username=username or None,
        registry_password=password or None,
        downloads_dir=Path(r.value(o.downloads_dir)).expanduser(),
        engine=r.value(o.engine),
        chunk_size=chunk_mb * 1024 * 1024,
        docker_host=r.value(o.docker_host) or None,
        timeout=r.value(o.timeout),
        compression=r.value(o.compression),
        compression_level=r.value(o.compression_level),
        parallel=r.value(o.parallel),
        index=r.value(o.index),
    )
    r.check_unknown()
    try:
        codec(settings.compression, settings.compression_level)
    except ValueError as exc:
        raise UsageError(f"--compression-level: {exc}") from None
    return settings
