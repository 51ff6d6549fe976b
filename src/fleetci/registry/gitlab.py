"""GitLab's container-registry API: repositories of a project and their tags (keyset pagination)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fleetci.errors import FleetciError, UsageError
from fleetci.http import JsonApi, redact_url
from fleetci.registry.settings import RegistrySettings

if TYPE_CHECKING:
    import httpx


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


MAX_PAGES = 1000  # 100,000 repositories or tags of one project: more is a runaway pagination
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

    def _get_page(self, url: str, params: Mapping[str, Any] | None) -> httpx.Response:
        resp = self.response("GET", url, params=params, ok=ERROR_STATUSES)
        if resp.status_code != 200:
            raise self._refused(resp.status_code, resp.request.url.path)
        return resp

    def _pages(self, url: str, params: Mapping[str, str | int]) -> Iterator[Any]:
        """Every item of a paginated listing: a ``Link: <…>; rel="next"`` (keyset) or ``X-Next-Page``."""
        return self.pages(url, params=params, max_pages=MAX_PAGES, get=self._get_page)

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
