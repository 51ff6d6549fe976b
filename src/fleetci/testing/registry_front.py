"""GitLab's container registry's upload-status rule, in front of the real Debian ``docker-registry``.

distribution 2.8 checks an upload URL's signed ``_state`` (name, UUID, offset) on every request to the
session, the status GET included: when a pusher died with a chunk in flight, the registry holds more
bytes than the last state it signed, so it answers the status GET with ``404 BLOB_UPLOAD_INVALID`` and
the session can never be continued. GitLab's container registry (the fork fleetci pushes to in
production) skips that offset check for GET and HEAD, and answers with the real ``Range`` and a fresh
``Location`` signed for it, as the OCI distribution spec describes resuming.

:class:`RegistryFront` reproduces that one rule and nothing else: for a status GET/HEAD whose ``_state``
the registry itself signed (the test registry's HTTP secret is ours), it re-signs the state with the
offset the registry's storage holds; every request, upload data included, goes to the real registry,
which does all the checking and storing.

For tests of a push that fails part-way, :attr:`RegistryFront.refuse_digest` makes the front answer the
completing PUT of one blob (``?digest=``) with ``403 DENIED``, as a registry whose policy refuses a
blob does; it answers only once another upload's chunk reached it, so that upload is in flight.
:attr:`RegistryFront.hold_first_index` holds the first OCI index ``PUT`` until a second one went through:
two pushers racing to write one index, the first reader's write landing last.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from multidict import CIMultiDict

from fleetci.http import error_response, forwardable, guarded_app
from fleetci.testing.docker_registry import RegistryProcess
from fleetci.testing.server import BackgroundApp

UPLOAD_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<uuid>[0-9a-fA-F-]{36})$")


def _b64decode(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def resign_state(token: str, secret: str, offset: int) -> str | None:
    """``token`` with its Offset replaced, signed as distribution signs; None unless ``secret`` signed it."""
    try:
        raw = _b64decode(token)
    except (binascii.Error, ValueError):
        return None
    mac, payload = raw[:32], raw[32:]
    if not hmac.compare_digest(mac, hmac.new(secret.encode(), payload, hashlib.sha256).digest()):
        return None
    try:
        state = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(state, dict):
        return None
    state["Offset"] = offset
    body = json.dumps(state, separators=(",", ":")).encode()
    signed = hmac.new(secret.encode(), body, hashlib.sha256).digest() + body
    return base64.urlsafe_b64encode(signed).decode()


def state_offset(token: str) -> int | None:
    """The offset a ``_state`` token says the session is at (no signature check: for tests' reading)."""
    try:
        value = json.loads(_b64decode(token)[32:]).get("Offset")
    except (binascii.Error, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


class RegistryFront(BackgroundApp):
    """A pass-through HTTP front for ``registry`` that answers upload status the way GitLab's does."""

    def __init__(self, registry: RegistryProcess, max_body: int = 4 * 1024**3) -> None:
        super().__init__(self._app)
        self.registry = registry
        self.max_body = max_body
        self.resigned = 0  # status requests whose stale state was re-signed (what a test asserts on)
        self.refuse_digest = ""  # the blob whose completing PUT is refused ("": none)
        self.patches = 0  # upload chunks (PATCH) forwarded
        self.patch_delay = 0.0  # seconds each chunk waits before it is forwarded (a slow link, for tests)
        self.hold_first_index = False  # hold the first index PUT until another index PUT went through
        self.index_puts = 0  # OCI index PUTs seen
        self._second_index: asyncio.Event | None = None
        self._patched: asyncio.Event | None = None
        self._session: ClientSession | None = None

    @property
    def secret(self) -> str:
        http: dict[str, Any] = self.registry.config()["http"]  # type: ignore[assignment]
        return str(http["secret"])

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    def upload_size(self, name: str, uuid: str) -> int | None:
        """Bytes the registry's storage holds for an upload session; None when it has none."""
        held = held_bytes(self.registry.storage, f"/v2/{name}/blobs/uploads/{uuid}")
        return None if held < 0 else held

    def _app(self) -> web.Application:
        app = guarded_app(self.max_body)
        app.router.add_route("*", "/{tail:.*}", self._forward)

        async def open_session(_app: web.Application) -> None:
            self._session = ClientSession(auto_decompress=False, timeout=ClientTimeout(total=None))
            self._patched = asyncio.Event()
            self._second_index = asyncio.Event()

        async def close_session(_app: web.Application) -> None:
            if self._session is not None:
                await self._session.close()

        app.on_startup.append(open_session)
        app.on_cleanup.append(close_session)
        return app

    def _target(self, request: web.Request) -> str:
        query = list(parse_qsl(request.query_string, keep_blank_values=True))
        m = UPLOAD_PATH.match(request.path)
        if request.method in ("GET", "HEAD") and m is not None:
            size = self.upload_size(m["name"], m["uuid"])
            for i, (key, value) in enumerate(query):
                if key == "_state" and size is not None and state_offset(value) != size:
                    fresh = resign_state(value, self.secret, size)
                    if fresh is not None:
                        query[i] = (key, fresh)
                        self.resigned += 1
        qs = f"?{urlencode(query)}" if query else ""
        return f"{self.registry.url}{request.raw_path.split('?', 1)[0]}{qs}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None and self._patched is not None
        if (
            self.refuse_digest
            and request.method == "PUT"
            and request.query.get("digest") == self.refuse_digest
        ):
            with contextlib.suppress(TimeoutError):  # until another upload is sending chunks
                await asyncio.wait_for(self._patched.wait(), 30)
            await request.read()
            return web.json_response(
                {"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]},
                status=403,
            )
        if (
            request.method == "PUT"
            and "/manifests/" in request.path
            and request.content_type == "application/vnd.oci.image.index.v1+json"
        ):
            assert self._second_index is not None
            self.index_puts += 1
            if self.hold_first_index and self.index_puts == 1:
                body = await request.read()  # the whole index, then wait for the other writer
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._second_index.wait(), 60)
                return await self._send(request, body)
            response = await self._send(request, await request.read())
            self._second_index.set()
            return response
        if request.method == "PATCH":
            self.patches += 1
            self._patched.set()
            if self.patch_delay:
                await asyncio.sleep(self.patch_delay)
        return await self._send(request, request.content if request.body_exists else None)

    async def _send(self, request: web.Request, body: Any) -> web.StreamResponse:
        assert self._session is not None
        headers = CIMultiDict(forwardable(request.headers.items()))  # Accept comes more than once
        headers["Host"] = request.host  # the registry builds Location URLs from it: they point here
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        try:
            async with self._session.request(
                request.method, self._target(request), headers=headers, data=body, allow_redirects=False
            ) as upstream:
                data = await upstream.read()
                return web.Response(
                    status=upstream.status,
                    headers=CIMultiDict(forwardable(upstream.headers.items())),
                    body=data if request.method != "HEAD" else None,
                )
        except ClientError as exc:
            # a pusher killed mid-chunk cuts its body short: say so in one line, never the URL (_state)
            return error_response(502, f"request to the registry cut short ({type(exc).__name__})")


def upload_data(storage: Path, location: str) -> Path:
    """The registry's on-disk data of the upload session at ``location`` (filesystem driver layout)."""
    path = location.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]  # v2/<repo>/blobs/uploads/<uuid>
    repo, _, uuid = path.removeprefix("v2/").partition("/blobs/uploads/")
    return storage / "docker/registry/v2/repositories" / repo / "_uploads" / uuid / "data"


def held_bytes(storage: Path, location: str) -> int:
    """Bytes the registry holds for the session at ``location``; -1 when it has none."""
    try:
        return upload_data(storage, location).stat().st_size
    except OSError:
        return -1
