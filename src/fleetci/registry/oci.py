"""A daemonless OCI distribution client: blob HEAD/skip, cross-repository mount, streamed uploads.

Uploads stream from the archive file in 1 MiB reads (monolithic PUT up to the chunk size, PATCH chunks
above it), so memory stays bounded whatever the layer size. Chunked uploads record their session URL
and offset, so a push interrupted mid-layer resumes where the registry says it stopped. Auth follows the
registry's challenge: Bearer tokens from a GitLab-style realm (basic credentials exchanged for a JWT per
scope, refreshed before expiry) or HTTP basic.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urljoin

import httpx

from fleetci import retry
from fleetci.errors import FleetciError
from fleetci.http import client, describe, error_message, host_of, redact_url
from fleetci.registry.archive import MANIFEST_TYPES, Blob, read_window
from fleetci.registry.compress import CompressedStream, LayerChanged

if TYPE_CHECKING:
    from fleetci.registry.settings import RegistrySettings

CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
# Idempotent requests (HEAD/GET) retry twice on 502/503/504 or an unreachable registry: 0.2 s, 0.4 s.
IDEMPOTENT_RETRY = retry.Backoff(retries=2, initial=0.2, most=2.0, jitter=0.0)


class RegistryUnreachable(FleetciError, retry.Transient):
    """No answer from the registry (refused, reset, timed out): worth retrying an idempotent request."""


class UploadState(Protocol):
    """Where chunked upload sessions are remembered between runs (``state.PushState``)."""

    def upload_session(self, repo: str, digest: str) -> tuple[str, int] | None: ...

    def save_upload(self, repo: str, digest: str, location: str, offset: int) -> None: ...

    def forget_upload(self, repo: str, digest: str) -> None: ...


@dataclass
class Counters:
    blob_bytes_sent: int = 0
    blobs_uploaded: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    chunks_resumed: int = 0
    sessions_refused: int = 0
    manifests_put: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        """Count from any upload thread (parallel blob uploads share one client)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class _Challenge:
    scheme: str  # "basic" | "bearer"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str) -> _Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    low = scheme.lower()
    if low not in ("basic", "bearer"):
        return None
    return _Challenge(low, dict(CHALLENGE_PARAM.findall(rest)))


class RegistryClient:
    """One registry (``http(s)://host[:port]``) with one set of credentials."""

    def __init__(
        self,
        base_url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        timeout: float = 60.0,
        chunk_size: int = 128 * 1024 * 1024,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = host_of(self.base_url)  # what messages name: no userinfo
        self.username = username
        self.password = password
        self.chunk_size = chunk_size
        self.log = log or (lambda _m: None)
        self.counters = Counters()
        self._challenge: _Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        self._client = client(self.base_url, timeout=timeout, headers={"User-Agent": "fleetci-registry"})

    @classmethod
    def from_settings(
        cls, settings: RegistrySettings, skip_login: bool = False, log: Callable[[str], None] | None = None
    ) -> RegistryClient:
        """The client of ``settings``' registry; ``skip_login`` sends no credentials."""
        user, password = (
            (None, None) if skip_login else (settings.registry_username, settings.registry_password)
        )
        return cls(
            settings.registry_url,
            user,
            password,
            timeout=settings.timeout,
            chunk_size=settings.chunk_size,
            log=log,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- auth ------------------------------------------------------------------------------------------

    def _basic(self) -> httpx.BasicAuth | None:
        if self.username is None or self.password is None:
            return None
        return httpx.BasicAuth(self.username, self.password)

    def _auth_header(self, scopes: tuple[str, ...]) -> dict[str, str]:
        ch = self._challenge
        if ch is None:
            return {}
        if ch.scheme == "basic":
            basic = self._basic()
            if basic is None:
                raise FleetciError(
                    f"registry {self.host} needs credentials: set --registry-username/--registry-password"
                )
            raw = f"{self.username}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {"Authorization": f"Bearer {self._token(scopes)}"}

    def _token(self, scopes: tuple[str, ...]) -> str:
        key = " ".join(scopes)
        cached = self._tokens.get(key)
        if cached is not None and cached.expires - time.time() > 30:
            return cached.value
        assert self._challenge is not None
        realm = self._challenge.params.get("realm")
        if not realm:
            raise FleetciError(f"registry {self.host} asked for a bearer token without a realm")
        params: list[tuple[str, str | int | float | bool | None]] = [("scope", s) for s in scopes]
        if self._challenge.params.get("service"):
            params.insert(0, ("service", self._challenge.params["service"]))
        try:
            resp = self._client.get(realm, params=params, auth=self._basic(), timeout=30)
        except httpx.TransportError as exc:
            raise FleetciError(f"token server {host_of(realm)} unreachable: {describe(exc)}") from exc
        if resp.status_code in (401, 403):
            who = f"user {self.username!r}" if self.username else "anonymous access"
            raise FleetciError(f"token server {host_of(realm)} rejected {who} (HTTP {resp.status_code})")
        if resp.status_code != 200:
            raise FleetciError(f"token server {host_of(realm)} answered HTTP {resp.status_code}")
        try:
            data = resp.json()
            value = str(data.get("token") or data["access_token"])
        except (ValueError, KeyError) as exc:
            raise FleetciError(f"token server {host_of(realm)} sent no token") from exc
        ttl = float(data.get("expires_in") or 60)
        self._tokens[key] = _Token(value, time.time() + ttl)
        return value

    def _send(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        *,
        headers: dict[str, str] | None = None,
        content: Callable[[], Iterator[bytes] | bytes] | None = None,
        what: str,
    ) -> httpx.Response:
        """One request with auth: on a 401 challenge, learn it, fetch a token and send once more."""
        for attempt in (1, 2):
            h = {**self._auth_header(scopes), **(headers or {})}
            try:
                resp = self._client.request(method, url, headers=h, content=content() if content else None)
            except httpx.TransportError as exc:
                raise RegistryUnreachable(
                    f"registry {self.host} unreachable during {what}: {describe(exc)}"
                ) from exc
            if resp.status_code != 401:
                return resp
            challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
            if attempt == 2 or challenge is None:
                break
            error = challenge.params.get("error")
            if self._challenge is not None and error != "invalid_token":
                break  # we already sent what the challenge wants: the credentials are refused
            self._challenge = challenge
            self._tokens.clear()
        raise FleetciError(
            f"registry {self.host} refused {what}: HTTP 401 {_reason(resp)} (check the credentials)"
        )

    def _request(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        *,
        headers: dict[str, str] | None = None,
        content: Callable[[], Iterator[bytes] | bytes] | None = None,
        what: str,
        idempotent: bool = False,
    ) -> httpx.Response:
        if not idempotent:
            return self._send(method, url, scopes, headers=headers, content=content, what=what)

        def attempt(_n: int) -> httpx.Response:
            resp = self._send(method, url, scopes, headers=headers, content=content, what=what)
            if resp.status_code in (502, 503, 504):
                raise _Transient(resp)
            return resp

        try:
            return retry.call(attempt, IDEMPOTENT_RETRY, retry_on=(_Transient, RegistryUnreachable))
        except _Transient as exc:
            return exc.resp  # still 5xx after the retries: the caller names it

    def _fail(self, resp: httpx.Response, what: str) -> FleetciError:
        return FleetciError(f"registry {self.host} refused {what}: HTTP {resp.status_code} {_reason(resp)}")

    def _upload_error(self, resp: httpx.Response, what: str) -> Exception:
        """A refused upload request: :class:`_SessionLost` when the registry dropped the session itself
        (the caller starts the blob again), else the one-line failure."""
        fail = self._fail(resp, what)
        return _SessionLost(str(fail)) if resp.status_code in _SESSION_REFUSED else fail

    @staticmethod
    def _scopes(repo: str, *extra_pull: str, push: bool = True) -> tuple[str, ...]:
        own = f"repository:{repo}:{'pull,push' if push else 'pull'}"
        return (own, *(f"repository:{r}:pull" for r in extra_pull))

    # -- API calls -------------------------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: proves the registry speaks the distribution API (a 401 here is fine)."""
        try:
            resp = self._client.get("/v2/")
        except httpx.TransportError as exc:
            raise FleetciError(f"registry {self.host} unreachable: {describe(exc)}") from exc
        if resp.status_code not in (200, 401):
            raise FleetciError(
                f"{redact_url(self.base_url)} is not an OCI registry "
                f"(GET /v2/ answered HTTP {resp.status_code})"
            )

    def blob_exists(self, repo: str, digest: str, push: bool = True) -> bool:
        resp = self._request(
            "HEAD",
            f"/v2/{repo}/blobs/{digest}",
            self._scopes(repo, push=push),
            what=f"HEAD blob in {repo}",
            idempotent=True,
        )
        if resp.status_code in (200, 307):
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"HEAD {repo}@{digest[:19]}")

    def _start_upload(self, repo: str, mount: tuple[str, str] | None = None) -> tuple[bool, str]:
        url = f"/v2/{repo}/blobs/uploads/"
        scopes = self._scopes(repo)
        if mount is not None:
            url += f"?mount={quote(mount[0])}&from={quote(mount[1])}"
            scopes = self._scopes(repo, mount[1])
        resp = self._request("POST", url, scopes, headers={"Content-Length": "0"}, what=f"upload to {repo}")
        if resp.status_code == 201 and mount is not None:
            return True, ""
        if resp.status_code != 202 or "location" not in resp.headers:
            raise self._fail(resp, f"starting an upload to {repo}")
        return False, self._absolute(resp.headers["location"])

    def mount_blob(self, repo: str, digest: str, source: str) -> bool:
        """Make ``digest`` exist in ``repo`` without sending bytes (HEAD, then a cross-repository mount)."""
        if self.blob_exists(repo, digest):
            self.counters.add("blobs_skipped")
            return True
        mounted, location = self._start_upload(repo, (digest, source))
        if mounted:
            self.counters.add("blobs_mounted")
            return True
        self._request("DELETE", location, self._scopes(repo), what=f"cancelling an upload in {repo}")
        return False

    def _absolute(self, location: str) -> str:
        return urljoin(self.base_url + "/", location)

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        # httpx's params= would replace the upload URL's own query (it carries the registry's _state)
        return f"{location}{'&' if '?' in location else '?'}digest={quote(digest)}"

    def _stream(self, path: Path, start: int, size: int) -> Callable[[], Iterator[bytes]]:
        def gen() -> Iterator[bytes]:
            with path.open("rb") as fh:
                for data in read_window(fh, start, size):
                    self.counters.add("blob_bytes_sent", len(data))
                    yield data

        return gen

    def upload_status(self, location: str, repo: str) -> tuple[str, int] | None:
        """(fresh Location, bytes held) of an upload session, from the spec's status GET; None when gone.

        A pusher killed mid-chunk leaves the registry holding more than its saved offset (the chunk in
        flight landed, in part or whole, and its answer was lost). The status GET reports what the registry
        really holds (``204``, ``Range: 0-<last>``) and a Location whose state matches that offset: the
        upload goes on from there with that Location (the saved URL's state is stale, a PATCH on it is
        refused). Registries that validate the state even for status requests (distribution 2.8) answer
        ``404 BLOB_UPLOAD_INVALID`` then: the session is lost and the caller starts again.
        """
        resp = self._request(
            "GET", location, self._scopes(repo), what=f"upload status in {repo}", idempotent=True
        )
        if resp.status_code != 204:
            return None
        m = re.fullmatch(r"\s*(?:bytes=)?0-(\d+)\s*", resp.headers.get("range", ""))
        if m is None:
            return None
        last = int(m.group(1))
        # "0-0" is what an empty session reports (distribution answers 0-0 for 0 bytes)
        held = 0 if last == 0 else last + 1
        return self._absolute(resp.headers.get("location") or location), held

    def _resume(
        self, repo: str, key: str, state: UploadState, *, noun: str, limit: int | None = None, how: str = ""
    ) -> tuple[str, int]:
        """The saved session of ``key`` (a blob digest, or a layer's diff ID for a compressed upload) and
        where to go on in it; ("", 0) when there is none to use. ``limit``: the most the session may hold."""
        session = state.upload_session(repo, key)
        if session is None:
            return "", 0
        named = f"layer {key[:19]}" if noun == "layer" else key[:19]
        saved_location, saved = session
        status = self.upload_status(saved_location, repo)
        if status is None or (limit is not None and status[1] > limit):
            self.counters.add("sessions_refused")
            state.forget_upload(repo, key)
            self.log(
                f"saved upload session for {named} in {repo} (offset {saved}) was "
                f"refused by the registry; re-uploading the {noun} from the start"
            )
            return "", 0
        location, held = status
        self.counters.add("chunks_resumed")
        if held != saved:
            side = "ahead of" if held > saved else "behind"
            self.log(
                f"registry holds {held} bytes of {named} in {repo}, {side} the saved offset "
                f"{saved}: going on from the registry's"
            )
        self.log(f"resume {named} in {repo} at {held / 1e6:.1f} MB{how}")
        state.save_upload(repo, key, location, held)
        return location, held

    def _send_blob(
        self,
        repo: str,
        blob: Blob,
        archive: Path,
        location: str,
        offset: int,
        state: UploadState | None,
        stop: threading.Event | None = None,
    ) -> None:
        """Send ``blob`` from ``offset`` through the session at ``location`` and complete it.

        Raises :class:`_SessionLost` when the registry refuses the session itself (400/404/416: unknown,
        invalid state, wrong range or a digest that does not match what the session holds).
        """
        what = f"upload of {blob.digest[:19]} to {repo}"
        if blob.size <= self.chunk_size and offset == 0:
            resp = self._request(
                "PUT",
                self._with_digest(location, blob.digest),
                self._scopes(repo),
                headers={"Content-Length": str(blob.size), "Content-Type": "application/octet-stream"},
                content=self._stream(archive, blob.offset, blob.size),
                what=what,
            )
        else:
            if state is not None and offset == 0:
                state.save_upload(repo, blob.digest, location, 0)  # a kill in the first chunk resumes too
            while offset < blob.size:
                _check_stop(stop, blob.digest, repo, offset)
                n = min(self.chunk_size, blob.size - offset)
                resp = self._request(
                    "PATCH",
                    location,
                    self._scopes(repo),
                    headers={
                        "Content-Length": str(n),
                        "Content-Range": f"{offset}-{offset + n - 1}",
                        "Content-Type": "application/octet-stream",
                    },
                    content=self._stream(archive, blob.offset + offset, n),
                    what=what,
                )
                if resp.status_code != 202:
                    raise self._upload_error(
                        resp, f"chunk {offset}-{offset + n - 1} of {blob.digest[:19]} in {repo}"
                    )
                location = self._absolute(resp.headers.get("location", location))
                offset += n
                if state is not None:
                    state.save_upload(repo, blob.digest, location, offset)
            resp = self._request(
                "PUT",
                self._with_digest(location, blob.digest),
                self._scopes(repo),
                headers={"Content-Length": "0"},
                what=f"completing {blob.digest[:19]} in {repo}",
            )
        if resp.status_code != 201:
            raise self._upload_error(resp, what)

    def push_blob(
        self,
        repo: str,
        blob: Blob,
        archive: Path,
        mount_from: list[str] | None = None,
        state: UploadState | None = None,
        stop: threading.Event | None = None,
    ) -> str:
        """Make ``blob`` exist in ``repo``; returns how: ``skipped``, ``mounted`` or ``uploaded``.

        A saved session (``state``) is resumed where the registry says it stands; when the registry
        refuses that session (expired, purged, or its state is stale), the blob starts again from 0 in a
        new session, once: a refusal of the new session is an error.
        """
        if self.blob_exists(repo, blob.digest):
            self.counters.add("blobs_skipped")
            return "skipped"
        location = ""
        for source in mount_from or []:
            if source == repo:
                continue
            mounted, location = self._start_upload(repo, (blob.digest, source))
            if mounted:
                self.counters.add("blobs_mounted")
                return "mounted"
            break  # the registry opened a normal upload session instead; use it
        offset = 0
        resumed = False
        if not location and state is not None:
            location, offset = self._resume(repo, blob.digest, state, noun="blob", limit=blob.size)
            resumed = bool(location)
        while True:
            if not location:
                _, location = self._start_upload(repo)
                offset = 0
            try:
                self._send_blob(repo, blob, archive, location, offset, state, stop)
                break
            except _SessionLost as exc:
                if state is not None:
                    state.forget_upload(repo, blob.digest)
                if not resumed:
                    raise FleetciError(str(exc)) from None
                self.counters.add("sessions_refused")
                self.log(f"resumed session refused ({exc}); re-uploading the blob from the start")
                location, offset, resumed = "", 0, False
        if state is not None:
            state.forget_upload(repo, blob.digest)
        self.counters.add("blobs_uploaded")
        return "uploaded"

    def push_compressed(
        self,
        repo: str,
        key: str,
        open_stream: Callable[[], CompressedStream],
        state: UploadState | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[str, int]:
        """Upload a compressed layer whose digest is known only at its end; returns (digest, size).

        The stream goes out in PATCH requests of up to ``chunk_size`` bytes each, as docker and skopeo
        send unknown-length blobs (chunked transfer encoding), the session saved after each one under
        ``key`` (diff ID + codec identity); the final PUT names the digest. A saved session is resumed
        where the registry says it stands: the layer is compressed again and the bytes the registry
        holds are hashed and skipped, not sent. A refused resumed session starts again from 0, once.
        ``stop`` set (another upload failed, or the push was interrupted) ends it before its next chunk,
        the session saved for a resume. A layer that no longer hashes to its diff ID ends it before the
        final PUT and forgets the session (its bytes are not the layer's).
        """
        location, offset, resumed = "", 0, False
        if state is not None:
            location, offset = self._resume(
                repo, key, state, noun="layer", how=" (compressing again up to there)"
            )
            resumed = bool(location)
        while True:
            if not location:
                _, location = self._start_upload(repo)
                offset = 0
            try:
                with open_stream() as stream:
                    return self._send_stream(repo, key, stream, location, offset, state, stop)
            except LayerChanged:
                if state is not None:
                    state.forget_upload(repo, key)
                raise
            except _SessionLost as exc:
                if state is not None:
                    state.forget_upload(repo, key)
                if not resumed:
                    raise FleetciError(str(exc)) from None
                self.counters.add("sessions_refused")
                self.log(f"resumed session refused ({exc}); re-uploading the layer from the start")
                location, offset, resumed = "", 0, False

    def _send_stream(
        self,
        repo: str,
        key: str,
        stream: CompressedStream,
        location: str,
        offset: int,
        state: UploadState | None,
        stop: threading.Event | None = None,
    ) -> tuple[str, int]:
        what = f"upload of layer {key[:19]} to {repo}"
        if offset and stream.skip(offset) != offset:
            raise _SessionLost(f"the registry holds {offset} bytes, more than the compressed layer")
        if state is not None and offset == 0:
            state.save_upload(repo, key, location, 0)  # a kill in the first chunk resumes too
        while not stream.at_end():
            _check_stop(stop, key, repo, offset)
            start = offset
            body = self._counted(stream, self.chunk_size)
            resp = self._request(
                "PATCH",
                location,
                self._scopes(repo),
                headers={"Content-Type": "application/octet-stream"},
                content=body,
                what=what,
            )
            offset = stream.produced
            if resp.status_code != 202:
                raise self._upload_error(resp, f"bytes {start}-{offset - 1} of layer {key[:19]} in {repo}")
            m = re.fullmatch(r"\s*(?:bytes=)?0-(\d+)\s*", resp.headers.get("range", ""))
            if m is not None and int(m.group(1)) + 1 != offset:
                raise _SessionLost(f"registry holds {int(m.group(1)) + 1} bytes of {what}, sent {offset}")
            location = self._absolute(resp.headers.get("location", location))
            if state is not None:
                state.save_upload(repo, key, location, offset)
        digest = stream.digest
        resp = self._request(
            "PUT",
            self._with_digest(location, digest),
            self._scopes(repo),
            headers={"Content-Length": "0"},
            what=f"completing {digest[:19]} in {repo}",
        )
        if resp.status_code != 201:
            raise self._upload_error(resp, what)
        if state is not None:
            state.forget_upload(repo, key)
        self.counters.add("blobs_uploaded")
        return digest, stream.produced

    def _counted(self, stream: CompressedStream, limit: int) -> Callable[[], Iterator[bytes]]:
        """One PATCH body of the stream; a second send (a 401 after the body went) cannot replay it."""
        used = False

        def gen() -> Iterator[bytes]:
            nonlocal used
            if used:
                raise _SessionLost("the registry asked for credentials again in the middle of an upload")
            used = True
            for piece in stream.take(limit):
                self.counters.add("blob_bytes_sent", len(piece))
                yield piece

        return gen

    def get_blob(self, repo: str, digest: str, limit: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (an image config), checked against its digest."""
        resp = self._request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            self._scopes(repo, push=False),
            what=f"GET blob {digest[:19]} in {repo}",
            idempotent=True,
        )
        if resp.status_code != 200:
            raise self._fail(resp, f"GET {repo}@{digest[:19]}")
        if len(resp.content) > limit:
            raise FleetciError(f"blob {digest[:19]} in {repo} is larger than {limit} bytes")
        if "sha256:" + hashlib.sha256(resp.content).hexdigest() != digest:
            raise FleetciError(f"blob {digest[:19]} in {repo} does not match its digest")
        return resp.content

    def _manifest(self, method: str, repo: str, ref: str, push: bool) -> httpx.Response | None:
        """GET or HEAD ``repo:ref`` in any manifest type; None when the tag does not exist."""
        what = f"{method} manifest {repo}:{ref}"
        resp = self._request(
            method,
            f"/v2/{repo}/manifests/{ref}",
            self._scopes(repo, push=push),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            what=what,
            idempotent=True,
        )
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(resp, what)
        return resp

    def get_manifest(self, repo: str, ref: str, push: bool = False) -> tuple[bytes, str, str] | None:
        """(bytes, media type, digest) of ``repo:ref``; None when the tag does not exist."""
        resp = self._manifest("GET", repo, ref, push)
        if resp is None:
            return None
        digest = resp.headers.get("docker-content-digest", "")
        return resp.content, resp.headers.get("content-type", ""), digest

    def manifest_digest(self, repo: str, ref: str) -> str | None:
        resp = self._manifest("HEAD", repo, ref, push=False)
        return None if resp is None else resp.headers.get("docker-content-digest") or None

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        resp = self._request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            self._scopes(repo),
            headers={"Content-Type": media_type},
            content=lambda: data,
            what=f"PUT manifest {repo}:{ref}",
        )
        if resp.status_code != 201:
            raise self._fail(resp, f"manifest {repo}:{ref}")
        self.counters.add("manifests_put")
        return str(resp.headers.get("docker-content-digest", ""))

    def tags(self, repo: str) -> list[str]:
        resp = self._request(
            "GET",
            f"/v2/{repo}/tags/list",
            self._scopes(repo, push=False),
            what=f"tags of {repo}",
            idempotent=True,
        )
        if resp.status_code == 404:
            return []
        if resp.status_code != 200:
            raise self._fail(resp, f"tags of {repo}")
        data: dict[str, Any] = resp.json()
        return sorted(data.get("tags") or [])


class UploadStopped(FleetciError):
    """An upload ended between chunks because the push is stopping (its session is saved)."""


def _check_stop(stop: threading.Event | None, what: str, repo: str, offset: int) -> None:
    if stop is not None and stop.is_set():
        raise UploadStopped(
            f"upload of {what[:19]} to {repo} stopped at {offset} bytes; push again to resume"
        )


def _reason(resp: httpx.Response) -> str:
    """The registry's reason for an error answer (``CODE: message``), via the one error-body parser."""
    return error_message(resp.status_code, resp.content)


class _Transient(retry.Transient):
    """A 502/503/504 answer to an idempotent request."""

    def __init__(self, resp: httpx.Response) -> None:
        super().__init__(f"HTTP {resp.status_code}")
        self.resp = resp


class _SessionLost(Exception):
    """The registry refused an upload session itself (not the request): start a new one, or fail."""


# unknown or invalid session, digest that does not match what it holds, out-of-range chunk
_SESSION_REFUSED = frozenset({400, 404, 416})
