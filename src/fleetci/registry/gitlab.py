"""GitLab's container-registry API: repositories of a project and their tags (keyset pagination)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from fleetci.errors import FleetciError, UsageError
from fleetci.http import client, describe, redact_url
from fleetci.registry.settings import RegistrySettings


@dataclass
class GitLabRepository:
    id: int
    name: str  # path inside the project, e.g. x86/presto-coordinator
    path: str
    location: str
    tags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """``gitlab-list --json``: one repository."""
        return {"id": self.id, "name": self.name, "location": self.location, "tags": self.tags}


class GitLabAPI:
    """``/api/v4/projects/:id/registry/…`` with a personal/deploy token or a CI job token."""

    def __init__(self, settings: RegistrySettings) -> None:
        if settings.gitlab_token:
            headers = {"PRIVATE-TOKEN": settings.gitlab_token}
        elif settings.job_token:
            headers = {"JOB-TOKEN": settings.job_token}
        else:
            raise UsageError(
                "no GitLab token: pass --gitlab-token or set GITLAB_TOKEN (CI_JOB_TOKEN in GitLab CI)"
            )
        self.settings = settings
        self.base = f"{settings.gitlab_url}/api/v4/projects/{quote(settings.gitlab_project, safe='')}"
        self.client = client(headers=headers, timeout=settings.timeout)

    def close(self) -> None:
        self.client.close()

    def _get(self, url: str, params: dict[str, Any] | None = None) -> httpx.Response:
        host = redact_url(self.settings.gitlab_url)
        try:
            resp = self.client.get(url, params=params)
        except httpx.TransportError as exc:
            raise FleetciError(f"GitLab at {host} unreachable: {describe(exc)}") from exc
        if resp.status_code == 401:
            raise FleetciError(f"GitLab at {host} rejected the token (HTTP 401)")
        if resp.status_code == 403:
            raise FleetciError(
                f"GitLab at {host}: the token may not read the registry of "
                f"{self.settings.gitlab_project} (HTTP 403)"
            )
        if resp.status_code == 404:
            raise FleetciError(
                f"GitLab at {host}: project {self.settings.gitlab_project} not found (HTTP 404)"
            )
        if resp.status_code != 200:
            raise FleetciError(
                f"GitLab at {host} answered HTTP {resp.status_code} for {resp.request.url.path}"
            )
        return resp

    def _pages(self, url: str, params: dict[str, Any]) -> Iterator[Any]:
        next_url: str | None = url
        next_params: dict[str, Any] | None = params
        while next_url:
            resp = self._get(next_url, next_params)
            try:
                items = resp.json()
            except ValueError as exc:
                raise FleetciError(f"GitLab sent invalid JSON for {resp.request.url.path}") from exc
            if not isinstance(items, list):
                raise FleetciError(f"GitLab sent an unexpected answer for {resp.request.url.path}")
            yield from items
            link = resp.links.get("next", {}).get("url")
            page = resp.headers.get("x-next-page")
            if link:
                next_url, next_params = link, None
            elif page:
                next_params = {**params, "page": page}
            else:
                next_url = None

    def repositories(self, with_tags: bool = True) -> list[GitLabRepository]:
        repos = []
        for item in self._pages(f"{self.base}/registry/repositories", {"per_page": 100}):
            repo = GitLabRepository(
                int(item["id"]), str(item["name"]), str(item["path"]), str(item["location"])
            )
            if with_tags:
                repo.tags = self.tags(repo.id)
            repos.append(repo)
        return sorted(repos, key=lambda r: r.name)

    def tags(self, repository_id: int) -> list[str]:
        params = {"pagination": "keyset", "per_page": 100, "order_by": "name", "sort": "asc"}
        url = f"{self.base}/registry/repositories/{repository_id}/tags"
        return [str(t["name"]) for t in self._pages(url, params)]
