"""GitLab's container-registry API: repositories of a project and their tags (keyset pagination)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fleetci.errors import FleetciError, UsageError
from fleetci.http import JsonApi, loads_strict, redact_url
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


ERROR_STATUSES = range(400, 600)  # answered here, in GitLab's terms (see GitLabAPI._refused)


class GitLabAPI(JsonApi):
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
        project = quote(settings.gitlab_project, safe="")
        super().__init__(
            f"{settings.gitlab_url}/api/v4/projects/{project}",
            what=f"GitLab at {redact_url(settings.gitlab_url)}",
            timeout=settings.timeout,
            headers=headers,
        )

    def _refused(self, status: int, path: str) -> FleetciError:
        """What an error answer means here: the token, its access, the project (one line each)."""
        project = self.settings.gitlab_project
        if status == 401:
            return FleetciError(f"{self.what} rejected the token (HTTP 401)")
        if status == 403:
            return FleetciError(f"{self.what}: the token may not read the registry of {project} (HTTP 403)")
        if status == 404:
            return FleetciError(f"{self.what}: project {project} not found (HTTP 404)")
        return FleetciError(f"{self.what} answered HTTP {status} for {path}")

    def _pages(self, url: str, params: Mapping[str, str | int]) -> Iterator[Any]:
        """Every item of a paginated listing: a ``Link: <…>; rel="next"`` (keyset) or ``X-Next-Page``."""
        next_url: str | None = url
        next_params: Mapping[str, str | int] | None = params
        while next_url:
            resp = self.response("GET", next_url, params=next_params, ok=ERROR_STATUSES)
            where = resp.request.url.path
            if resp.status_code != 200:
                raise self._refused(resp.status_code, where)
            try:
                items = loads_strict(resp.content)
            except ValueError as exc:
                raise FleetciError(f"GitLab sent invalid JSON for {where}") from exc
            if not isinstance(items, list):
                raise FleetciError(f"GitLab sent an unexpected answer for {where}")
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
        for item in self._pages("/registry/repositories", {"per_page": 100}):
            repo = GitLabRepository(
                int(item["id"]), str(item["name"]), str(item["path"]), str(item["location"])
            )
            if with_tags:
                repo.tags = self.tags(repo.id)
            repos.append(repo)
        return sorted(repos, key=lambda r: r.name)

    def tags(self, repository_id: int) -> list[str]:
        params: dict[str, str | int] = {
            "pagination": "keyset",
            "per_page": 100,
            "order_by": "name",
            "sort": "asc",
        }
        url = f"/registry/repositories/{repository_id}/tags"
        return [str(t["name"]) for t in self._pages(url, params)]
