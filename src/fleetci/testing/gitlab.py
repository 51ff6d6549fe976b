"""A GitLab emulator for the container-registry side: the REST API and the registry's JWT token realm.

What it serves is read from a real ``docker-registry`` (``fleetci.testing.docker_registry``), as GitLab's API
reflects its own registry: ``/api/v4/projects/:id/registry/repositories`` (``tags=true``,
``tags_count=true``, offset pagination) and ``…/repositories/:repository_id/tags`` (offset or keyset
pagination with ``Link`` headers). Authentication follows GitLab: ``PRIVATE-TOKEN``, ``JOB-TOKEN`` or
``Authorization: Bearer``; ``/jwt/auth`` trades HTTP basic credentials (any user name with a personal
token, ``gitlab-ci-token`` with a job token) for an RS256 JWT the registry trusts, granting per scope
only the actions the token may perform.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode

import httpx
import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fleetci.http import async_client, describe, error_response, guarded_app
from fleetci.testing.server import BackgroundApp, plain_host, small_int

SERVICE = "container_registry"
ISSUER = "gitlab-issuer"
MAX_BODY_BYTES = 64 * 1024  # every endpoint is a GET: a body is never needed, a small one is tolerated


@web.middleware
async def _read_body(request: web.Request, handler: Any) -> web.StreamResponse:
    """Read (and drop) any request body first: the guards' cap then refuses a chunked one with 413 too,
    instead of the server draining what no handler reads."""
    if request.body_exists:
        await request.read()
    response: web.StreamResponse = await handler(request)
    return response


@dataclass(frozen=True)
class TokenInfo:
    user: str
    kind: str = "private"  # private | job
    write: bool = True


@dataclass
class SigningKey:
    """RSA key + self-signed certificate: the registry's ``rootcertbundle`` and the JWT ``kid``."""

    key: rsa.RSAPrivateKey
    cert_pem: bytes
    kid: str

    @classmethod
    def generate(cls) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetci gitlab emulator")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # libtrust key id, what distribution matches a token's "kid" against
        b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
        kid = ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))
        return cls(key, cert.public_bytes(serialization.Encoding.PEM), kid)


@dataclass
class GitLabEmulator:
    """State: projects, tokens, the registry to reflect, and counters for tests."""

    registry_url: str
    registry_host: str
    projects: dict[str, int] = field(default_factory=lambda: {"hercules/veloxtesting": 4242})
    tokens: dict[str, TokenInfo] = field(default_factory=dict)
    registry_basic: tuple[str, str] | None = None
    signing: SigningKey = field(default_factory=SigningKey.generate)
    token_ttl: int = 300
    requests: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._repo_ids: dict[str, int] = {}

    # -- tokens ------------------------------------------------------------------------------------------

    def issue(self, user: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.token_ttl,
            "jti": secrets.token_hex(12),
            "access": access,
        }
        return jwt.encode(claims, self.signing.key, algorithm="RS256", headers={"kid": self.signing.kid})

    def _admin_headers(self) -> dict[str, str]:
        if self.registry_basic is not None:
            raw = f"{self.registry_basic[0]}:{self.registry_basic[1]}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        token = self.issue(
            "gitlab-admin",
            [
                {"type": "registry", "name": "catalog", "actions": ["*"]},
                {"type": "repository", "name": "*", "actions": ["pull"]},
            ],
        )
        return {"Authorization": f"Bearer {token}"}

    def _repo_headers(self, name: str) -> dict[str, str]:
        if self.registry_basic is not None:
            return self._admin_headers()
        token = self.issue("gitlab-admin", [{"type": "repository", "name": name, "actions": ["pull"]}])
        return {"Authorization": f"Bearer {token}"}

    def _count(self, key: str) -> None:
        self.requests[key] = self.requests.get(key, 0) + 1

    # -- registry reflection -----------------------------------------------------------------------------

    async def _catalog(self, client: httpx.AsyncClient) -> list[str]:
        names: list[str] = []
        url: str | None = f"{self.registry_url}/v2/_catalog?n=1000"
        while url:
            resp = await client.get(url, headers=self._admin_headers())
            resp.raise_for_status()
            names += resp.json().get("repositories") or []
            nxt = resp.links.get("next", {}).get("url")
            url = f"{self.registry_url}{nxt}" if nxt and nxt.startswith("/") else nxt
        return names

    async def _tags(self, client: httpx.AsyncClient, name: str) -> list[str]:
        resp = await client.get(f"{self.registry_url}/v2/{name}/tags/list", headers=self._repo_headers(name))
        if resp.status_code == 404:
            return []
        resp.raise_for_status()
        return sorted(resp.json().get("tags") or [])

    def repo_id(self, path: str) -> int:
        if path not in self._repo_ids:
            self._repo_ids[path] = 100_000 + zlib.crc32(path.encode()) % 900_000
        return self._repo_ids[path]

    async def _repositories(self, project: str) -> list[tuple[str, list[str]]]:
        async with async_client(timeout=30) as client:
            names = [n for n in await self._catalog(client) if n.startswith(project + "/")]
            out = []
            for n in sorted(names):
                tags = await self._tags(client, n)
                if tags:  # GitLab hides repositories whose tags were all deleted
                    out.append((n, tags))
            return out

    # -- HTTP --------------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """GitLab's routes behind the shared guards (body cap, one-line errors, quiet logs)."""
        app = guarded_app(MAX_BODY_BYTES)
        app.middlewares.append(_read_body)
        app.router.add_get(
            "/api/v4/projects/{project:.+}/registry/repositories/{repo_id:\\d+}/tags", self._h_tags
        )
        app.router.add_get("/api/v4/projects/{project:.+}/registry/repositories", self._h_repositories)
        app.router.add_get("/jwt/auth", self._h_jwt)
        app.router.add_get("/-/health", self._h_health)
        app.router.add_route("*", "/{tail:.*}", self._h_not_found)  # JSON, not aiohttp's text 404/405
        return app

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return error_response(status, message)

    def _refuse(self, request: web.Request) -> web.Response | None:
        """GitLab's 400/401 before any work: a Host we would echo into links, then the token."""
        if not plain_host(request):
            return self._error(400, "400 Bad request - Host header is not printable ASCII")
        if self._api_auth(request) is None:
            return self._error(401, "401 Unauthorized")
        return None

    async def _reflect(self, project: str) -> list[tuple[str, list[str]]] | web.Response:
        """The registry's repositories of ``project``, or a one-line 502 when the registry fails us."""
        try:
            return await self._repositories(project)
        except (httpx.HTTPError, ValueError) as exc:
            return self._error(502, f"502 Bad Gateway - container registry: {describe(exc)}")

    def _api_auth(self, request: web.Request) -> TokenInfo | None:
        raw = request.headers.get("PRIVATE-TOKEN") or request.headers.get("JOB-TOKEN")
        if raw is None:
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                raw = auth[7:].strip()
        if raw is None:
            return None
        info = self.tokens.get(raw)
        if info is None:
            return None
        if "JOB-TOKEN" in request.headers and info.kind != "job":
            return None
        if "PRIVATE-TOKEN" in request.headers and info.kind == "job":
            return None
        return info

    def _project(self, request: web.Request) -> str | None:
        raw = unquote(request.match_info["project"])
        number = small_int(raw)
        if number is not None:
            return next((p for p, i in self.projects.items() if i == number), None)
        return raw if raw in self.projects else None

    async def _h_not_found(self, request: web.Request) -> web.StreamResponse:
        return self._error(404, "404 Not Found")

    async def _h_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    def _repo_json(
        self, project: str, name: str, tags: list[str], with_tags: bool, count: bool
    ) -> dict[str, Any]:
        rel = name[len(project) + 1 :]
        body: dict[str, Any] = {
            "id": self.repo_id(name),
            "name": rel,
            "path": name,
            "project_id": self.projects[project],
            "location": f"{self.registry_host}/{name}",
            "created_at": "2025-01-01T00:00:00.000Z",
            "cleanup_policy_started_at": None,
            "status": None,
        }
        if with_tags:
            body["tags"] = [self._tag_json(name, t) for t in tags]
        if count:
            body["tags_count"] = len(tags)
        return body

    def _tag_json(self, name: str, tag: str) -> dict[str, Any]:
        return {"name": tag, "path": f"{name}:{tag}", "location": f"{self.registry_host}/{name}:{tag}"}

    @staticmethod
    def _int(request: web.Request, key: str, default: int, high: int = 100) -> int:
        try:
            return max(1, min(int(request.query.get(key, default)), high))
        except ValueError:
            return default

    def _offset_page(self, request: web.Request, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        per_page = self._int(request, "per_page", 20)
        page = self._int(request, "page", 1, 1 << 30)
        total_pages = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Total": str(len(items)),
            "X-Total-Pages": str(total_pages),
            "X-Next-Page": str(page + 1) if page < total_pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
        }
        links = []
        base = f"{request.scheme}://{request.host}{request.path}"
        if page < total_pages:
            links.append(f'<{base}?{urlencode({**request.query, "page": page + 1})}>; rel="next"')
        if links:
            headers["Link"] = ", ".join(links)
        return chunk, headers

    async def _h_repositories(self, request: web.Request) -> web.StreamResponse:
        self._count("repositories")
        refused = self._refuse(request)
        if refused is not None:
            return refused
        project = self._project(request)
        if project is None:
            return self._error(404, "404 Project Not Found")
        repos = await self._reflect(project)
        if isinstance(repos, web.Response):
            return repos
        items = [
            self._repo_json(
                project,
                n,
                tags,
                request.query.get("tags") == "true",
                request.query.get("tags_count") == "true",
            )
            for n, tags in repos
        ]
        page, headers = self._offset_page(request, items)
        return web.json_response(page, headers=headers)

    async def _h_tags(self, request: web.Request) -> web.StreamResponse:
        self._count("tags")
        refused = self._refuse(request)
        if refused is not None:
            return refused
        project = self._project(request)
        if project is None:
            return self._error(404, "404 Project Not Found")
        repo_id = small_int(request.match_info["repo_id"])
        repos = await self._reflect(project)
        if isinstance(repos, web.Response):
            return repos
        match = next(((n, t) for n, t in repos if self.repo_id(n) == repo_id), None)
        if match is None:
            return self._error(404, "404 Repository Not Found")
        name, tags = match
        items = [self._tag_json(name, t) for t in tags]
        if request.query.get("pagination") != "keyset":
            page, headers = self._offset_page(request, items)
            return web.json_response(page, headers=headers)
        if request.query.get("order_by", "name") != "name":
            return self._error(400, "400 Bad request - order_by does not have a valid value")
        desc = request.query.get("sort", "asc") == "desc"
        items.sort(key=lambda t: str(t["name"]), reverse=desc)
        last = request.query.get("last")
        if last is not None:
            items = [t for t in items if (str(t["name"]) < last if desc else str(t["name"]) > last)]
        per_page = self._int(request, "per_page", 20)
        page = items[:per_page]
        link: dict[str, str] = {}
        if len(items) > per_page:
            q = {k: v for k, v in request.query.items() if k != "last"}
            q["last"] = str(page[-1]["name"])
            link["Link"] = f'<{request.scheme}://{request.host}{request.path}?{urlencode(q)}>; rel="next"'
        return web.json_response(page, headers=link)

    async def _h_jwt(self, request: web.Request) -> web.StreamResponse:
        self._count("jwt")
        info: TokenInfo | None = None
        user = "anonymous"
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            info = self.tokens.get(password)
            if info is None or (info.kind == "job" and user != "gitlab-ci-token"):
                return web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "HTTP Basic: Access denied"}]}, status=401
                )
        if request.query.get("service") != SERVICE:
            return web.json_response(
                {"errors": [{"code": "DENIED", "message": "unknown service"}]}, status=403
            )
        access = []
        for scope in request.query.getall("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            allowed: set[str] = set()
            project = next((p for p in self.projects if name.startswith(p + "/")), None)
            if info is not None and project is not None:
                allowed = {"pull", "push"} if info.write else {"pull"}
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": "repository", "name": name, "actions": granted})
        token = self.issue(info.user if info else user, access)
        return web.json_response(
            {
                "token": token,
                "expires_in": self.token_ttl,
                "issued_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            }
        )


class GitLabServer(BackgroundApp):
    """Runs a :class:`GitLabEmulator` on its own event loop in a daemon thread (127.0.0.1 only)."""

    def __init__(self, emulator: GitLabEmulator, port: int = 0) -> None:
        self.emulator = emulator
        super().__init__(emulator.make_app, "127.0.0.1", port)

    @property
    def realm(self) -> str:
        return f"{self.url}/jwt/auth"

    def start(self) -> GitLabServer:
        super().start()
        return self


def location_quote(project: str) -> str:
    return quote(project, safe="")
