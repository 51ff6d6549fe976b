"""``fleetci registry`` settings: flag > environment (seed names) > config ``registry:`` > default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetci.config import Resolver, number, parse_positive_int, parse_timeout, section
from fleetci.errors import UsageError
from fleetci.http import host_of, redact_url

DEFAULT_REPO = "rapidsai/velox-testing"
DEFAULT_WORKFLOW = ".github/workflows/presto-build-images.yml"
DEFAULT_GITLAB_HOST = "gitlab-master.nvidia.com"
DEFAULT_GITLAB_PROJECT = "hercules/veloxtesting"
DEFAULT_REGISTRY = "gitlab-master.nvidia.com:5005"
DEFAULT_CHUNK_MB = 128
# Chunks of up to 1 TiB: chunk_mb * MiB must stay a sane byte count.
parse_chunk_mb = number(int, min=1, max=1024 * 1024)


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


FLAG_NAMES = (
    "repo",
    "workflow",
    "branch",
    "limit",
    "gh_token",
    "api_url",
    "gitlab_host",
    "gitlab_project",
    "gitlab_token",
    "registry",
    "registry_project",
    "registry_username",
    "registry_password",
    "downloads_dir",
    "engine",
    "chunk_mb",
    "docker_host",
    "timeout",
)


def registry_settings(
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> RegistrySettings:
    """Build :class:`RegistrySettings` from flags, the environment and the ``registry:`` config section."""
    environ = os.environ if env is None else env
    r = Resolver(flags, section(config, "registry"), environ, name="registry")
    gitlab_project = r.get("gitlab_project", DEFAULT_GITLAB_PROJECT, str, env=("GITLAB_PROJECT",)).strip("/")
    gitlab_token = r.get("gitlab_token", "", str, env=("GITLAB_TOKEN",)) or None
    job_token = environ.get("CI_JOB_TOKEN") or None
    password = (
        r.get("registry_password", "", str, env=("GITLAB_REGISTRY_PASSWORD", "CI_REGISTRY_PASSWORD"))
        or gitlab_token
        or job_token
    )
    username = r.get("registry_username", "", str, env=("GITLAB_REGISTRY_USERNAME", "CI_REGISTRY_USER"))
    if not username and password:
        username = "gitlab-ci-token" if password == job_token else "oauth2"
    registry = r.get("registry", DEFAULT_REGISTRY, str, env=("GITLAB_REGISTRY", "CI_REGISTRY"))
    gitlab_host = r.get("gitlab_host", DEFAULT_GITLAB_HOST, str, env=("GITLAB_HOST",))
    api = r.get("api_url", "https://api.github.com", str, env=("FLEETCI_API_URL", "GITHUB_API_URL"))
    try:
        registry_url = base_url(registry, "--registry")
        gitlab_url = base_url(gitlab_host, "--gitlab-host")
        api_url = base_url(api, "--api-url")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    chunk_mb = r.get("chunk_mb", DEFAULT_CHUNK_MB, parse_chunk_mb, env=("REGISTRY_CHUNK_MB",))
    settings = RegistrySettings(
        repo=r.get("repo", DEFAULT_REPO, parse_repo, env=("GH_SYNC_REPO",)),
        workflow=r.get("workflow", DEFAULT_WORKFLOW, str, env=("GH_SYNC_WORKFLOW",)),
        branch=r.get("branch", "", str, env=("GH_SYNC_BRANCH",)) or None,
        limit=r.get("limit", 20, parse_positive_int, env=("GH_SYNC_LIMIT",)),
        gh_token=r.get("gh_token", "", str, env=("GH_TOKEN", "GITHUB_TOKEN")) or None,
        api_url=api_url,
        gitlab_url=gitlab_url,
        gitlab_project=gitlab_project,
        gitlab_token=gitlab_token,
        job_token=job_token,
        registry_url=registry_url,
        registry_project=r.get(
            "registry_project", gitlab_project, str, env=("GITLAB_REGISTRY_PROJECT",)
        ).strip("/"),
        registry_username=username or None,
        registry_password=password or None,
        downloads_dir=Path(
            r.get("downloads_dir", "downloads", str, env=("GH_SYNC_DOWNLOADS_DIR",))
        ).expanduser(),
        engine=r.get("engine", "oci", parse_engine, env=("REGISTRY_ENGINE",)),
        chunk_size=chunk_mb * 1024 * 1024,
        docker_host=r.get("docker_host", "", str, env=("DOCKER_HOST",)) or None,
        timeout=r.get("timeout", 60.0, parse_timeout, env=("REGISTRY_TIMEOUT",)),
    )
    r.check_unknown()
    return settings
