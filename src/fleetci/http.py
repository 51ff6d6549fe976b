"""Shared HTTP plumbing: the async upstream client, hop-by-hop rules, health waits, port checks, and the
guards every server of ours runs behind (body cap before reading, one-line errors, no tracebacks).

Every capability that talks HTTP goes through here so timeouts, error wording and header hygiene agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from fleetci.errors import FleetciError

_server_log = logging.getLogger("fleetci.server")

if TYPE_CHECKING:  # aiohttp and httpx cost ~0.3 s to import: only the commands that talk HTTP pay it
    import aiohttp
    import httpx
    from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "accept-encoding",
    }
)


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in time."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header_map(self) -> dict[str, str]:
        """Lower-case name -> last value (enough for the single-valued headers we inspect)."""
        return {k.lower(): v for k, v in self.headers}


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]


class BodyTooLarge(Exception):
    """A streamed request body passed its cap mid-way: answer 413 (the upstream saw an aborted request)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is over the limit of {limit} bytes")
        self.limit = limit


class StreamedBody:
    """A request body forwarded upstream as it arrives, never held whole in memory.

    ``length`` is the declared Content-Length, forwarded as is (None: sent chunked). Past ``limit`` bytes
    the stream stops with :class:`BodyTooLarge`, which is how an undeclared (chunked) body is capped.
    """

    def __init__(self, chunks: AsyncIterable[bytes], limit: int, length: int | None = None) -> None:
        self.chunks = chunks
        self.limit = limit
        self.length = length
        self.received = 0
        self.too_large = False

    @classmethod
    def of(cls, request: web.Request, limit: int, chunk_size: int = 64 * 1024) -> StreamedBody | None:
        """``request``'s body (None when it has none). aiohttp decodes a Content-Encoding, so a declared
        length is forwarded only for an identity-encoded body."""
        if not request.body_exists:
            return None
        encoded = request.headers.get("Content-Encoding", "identity").strip().lower() != "identity"
        length = None if encoded else request.content_length
        return cls(request.content.iter_chunked(chunk_size), limit, length)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            self.received += len(chunk)
            if self.received > self.limit:
                self.too_large = True
                raise BodyTooLarge(self.limit)
            yield chunk


class AsyncUpstream:
    """Keep-alive client for one upstream base URL (``https://api.github.com``, GHES ``…/api/v3``).

    Userinfo in the URL (``https://user:secret@host``) is kept out of every attribute that is printed or
    compared (``base_url``, ``origin``). It becomes :attr:`default_authorization`, a Basic credential sent
    only on requests that carry no ``Authorization`` of their own; the cache keys such requests on that
    same value (``CacheEngine``), so what it fetches is never filed under the anonymous partition.
    """

    def __init__(self, base_url: str, timeout: float = 30.0, max_connections: int = 200) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        userinfo, hostport = parts.netloc.rpartition("@")[0], host_of(base_url)
        self._userinfo = userinfo
        self.default_authorization: str | None = None
        if userinfo:
            import base64

            user, _, password = userinfo.partition(":")
            pair = f"{unquote(user)}:{unquote(password)}".encode()
            self.default_authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        self.base_url = parts._replace(netloc=hostport).geturl()
        self.origin = f"{parts.scheme}://{hostport}"
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(self.timeout, 10)),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | StreamedBody | None = None,
        from_origin: bool = False,
    ) -> UpstreamResponse:
        """Send ``method target`` (path + query, relative to the base URL; with ``from_origin``, to the
        scheme and host: GHES serves GraphQL at ``/api/graphql`` beside its REST base ``/api/v3``) and
        read the whole answer.

        A :class:`StreamedBody` goes out as it arrives, without the total timeout (a large upload may
        take longer than an API answer should); :class:`BodyTooLarge` when it passes its cap.
        """
        import aiohttp

        url = (self.origin if from_origin else self.base_url) + target
        fwd = forwardable(headers)
        extra: dict[str, Any] = {}
        if self.default_authorization and not any(k.lower() == "authorization" for k, _ in fwd):
            fwd.append(("Authorization", self.default_authorization))
        data: bytes | StreamedBody | None = body if body else None
        if isinstance(body, StreamedBody):
            if body.length is not None:
                fwd.append(("Content-Length", str(body.length)))
            extra["timeout"] = aiohttp.ClientTimeout(
                total=None, sock_connect=min(self.timeout, 10), sock_read=self.timeout
            )
        try:
            async with self._session_now().request(
                method, url, headers=fwd, data=data, allow_redirects=False, **extra
            ) as resp:
                answer = await resp.read()
                return UpstreamResponse(resp.status, tuple(resp.headers.items()), answer)
        except asyncio.TimeoutError as exc:
            raise UpstreamError(f"{self.origin} did not answer within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            if isinstance(body, StreamedBody) and body.too_large:
                raise BodyTooLarge(body.limit) from None
            reason = describe(exc).replace(self._userinfo, "***") if self._userinfo else describe(exc)
            raise UpstreamError(f"{self.origin} unreachable: {reason}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def host_of(url: str) -> str:
    """``host[:port]`` of ``url``, never its userinfo (what messages and image references name)."""
    return urlsplit(url).netloc.rpartition("@")[2]


def redact_url(url: str) -> str:
    """``url`` with its userinfo hidden (``http://***@host``): for every URL we print, log or serve.

    The whole userinfo goes, not just the password: ``https://TOKEN@host`` carries the secret as the user.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + host_of(url)).geturl()


def describe(exc: BaseException) -> str:
    """A short, single-line reason for a network error."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:300]


def check_port_free(host: str, port: int) -> None:
    """Fail early, in one line, when a TCP port is taken (aiohttp would raise a long OSError later)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FleetciError(f"cannot listen on {host}:{port}: address already in use") from exc
            raise FleetciError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _client_options(
    base_url: str,
    timeout: float | httpx.Timeout,
    headers: Mapping[str, str] | None,
    auth: httpx.Auth | tuple[str, str] | None,
    follow_redirects: bool,
) -> dict[str, Any]:
    import httpx

    if not isinstance(timeout, httpx.Timeout):
        timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
    return {
        "base_url": base_url or "http://fleetci.local",
        "timeout": timeout,
        "headers": dict(headers or {}),
        "auth": auth,
        "follow_redirects": follow_redirects,
    }


def client(
    base_url: str = "",
    *,
    uds: str | Path | None = None,
    timeout: float | httpx.Timeout = 30.0,
    headers: Mapping[str, str] | None = None,
    auth: httpx.Auth | tuple[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    follow_redirects: bool = False,
) -> httpx.Client:
    """The one constructor of synchronous HTTP clients (TCP or a unix socket), so every capability
    gets the same connect timeout (at most 10 s) and redirect rule, and a fix lands everywhere.
    Environment proxies (``HTTPS_PROXY``, ``NO_PROXY``) apply as httpx reads them."""
    import httpx

    if uds is not None and transport is None:
        transport = httpx.HTTPTransport(uds=str(uds))
    options = _client_options(base_url, timeout, headers, auth, follow_redirects)
    return httpx.Client(transport=transport, **options)


def async_client(
    base_url: str = "",
    *,
    uds: str | Path | None = None,
    timeout: float | httpx.Timeout = 30.0,
    headers: Mapping[str, str] | None = None,
    auth: httpx.Auth | tuple[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    follow_redirects: bool = False,
) -> httpx.AsyncClient:
    """:func:`client` for coroutines: the one constructor of asynchronous httpx clients, same defaults."""
    import httpx

    if uds is not None and transport is None:
        transport = httpx.AsyncHTTPTransport(uds=str(uds))
    options = _client_options(base_url, timeout, headers, auth, follow_redirects)
    return httpx.AsyncClient(transport=transport, **options)


class ApiError(FleetciError):
    """A JSON API answered with an error status; ``status`` is kept so callers can branch on 404/409."""

    def __init__(self, status: int, message: str, *, what: str = "") -> None:
        super().__init__(f"{what + ': ' if what else ''}HTTP {status}: {message}")
        self.status = status
        self.reason = message


MAX_PAGES = 50  # default cap of one paginated list (5,000 items at 100 a page)


class ListTruncated(FleetciError):
    """A paginated list had more pages than its cap: the caller learns it, the list is never cut silently."""


def next_link(headers: Mapping[str, str]) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header (GitHub's and GitLab's keyset pagination), else None."""
    link = next((v for k, v in headers.items() if k.lower() == "link"), "")
    for part in link.split(","):
        bits = [b.strip() for b in part.split(";")]
        if any(b.replace(" ", "") in ('rel="next"', "rel=next") for b in bits[1:]):
            url = bits[0]
            if url.startswith("<") and url.endswith(">") and len(url) > 2:
                return url[1:-1]
    return None


PageFetch = Callable[[str, "Mapping[str, Any] | None"], tuple[bytes, Mapping[str, str]]]


def paginate(
    fetch: PageFetch,
    first: str,
    *,
    what: str,
    field: str | None = None,
    params: Mapping[str, Any] | None = None,
    max_pages: int = MAX_PAGES,
    truncated: Callable[[str], None] | None = None,
) -> Iterator[Any]:
    """Every item of a list over its pages: the one pagination of the project (see :meth:`JsonApi.pages`).

    ``fetch(url, params)`` returns one page's body and headers (or raises its own one-line error). The
    next page is the ``Link: <…>; rel="next"`` URL, else GitLab's ``X-Next-Page`` number. After
    ``max_pages`` with a next page still pending, ``truncated(message)`` is called and the walk stops, or
    (without it) :class:`ListTruncated` is raised: a cap never cuts a list silently.
    """
    url, page_params = first, params
    name = first.split("?")[0]
    for _ in range(max_pages):
        body, headers = fetch(url, page_params)
        try:
            data = loads_strict(body)
        except ValueError:
            raise FleetciError(f"{what}: answer to GET {name} is not JSON") from None
        items = data.get(field) if field and isinstance(data, dict) else data
        if not isinstance(items, list):
            raise FleetciError(f"{what}: GET {name} did not answer a list")
        yield from items
        link = next_link(headers)
        page = next((v for k, v in headers.items() if k.lower() == "x-next-page"), "").strip()
        if link:
            url, page_params = link, None
        elif page and params is not None:
            page_params = {**params, "page": page}
        else:
            return
    message = f"{what}: GET {name} has more than {max_pages} pages (the rest was not read)"
    if truncated is None:
        raise ListTruncated(message)
    truncated(message)


class JsonApi:
    """A small JSON-over-HTTP client for our own services and registries' JSON endpoints.

    Errors come back as one-line :class:`ApiError` (the body's ``message``/``error`` via
    :func:`error_message`), unreachable hosts as one-line :class:`FleetciError` naming the host.
    """

    def __init__(
        self,
        base_url: str,
        *,
        what: str = "",
        token: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        uds: str | Path | None = None,
    ) -> None:
        hdrs = {"Accept": "application/json", **dict(headers or {})}
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.what = what or redact_url(self.base_url)
        self.http = client(self.base_url, uds=uds, timeout=timeout, headers=hdrs, transport=transport)

    def unreachable(self, exc: Exception) -> FleetciError:
        """The error for a host that did not answer (a subclass may word it for its service)."""
        return FleetciError(f"{self.what} unreachable: {describe(exc)}")

    def refused(self, status: int, body: bytes) -> ApiError:
        """The error for an error answer (a subclass may word it for its service)."""
        return ApiError(status, error_message(status, body), what=self.what)

    def response(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | Iterable[bytes] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: Iterable[int] = (),
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request; the answer as it came (a body that is not JSON: a log, a file) or the error.

        ``content`` may be a file opened for reading (streamed); ``timeout`` replaces the client's for
        this request (a long poll, a large upload).
        """
        import httpx

        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            r = self.http.request(
                method, path, json=json_body, content=content, params=params, headers=headers, **extra
            )
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from None
        if r.status_code >= 400 and r.status_code not in set(ok):
            raise self.refused(r.status_code, r.content)
        return r

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | Iterable[bytes] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: Iterable[int] = (),
        timeout: float | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer (``None`` for an empty body) or :class:`ApiError`."""
        r = self.response(
            method,
            path,
            json_body=json_body,
            content=content,
            params=params,
            headers=headers,
            ok=ok,
            timeout=timeout,
        )
        if not r.content:
            return None
        try:
            return loads_strict(r.content)
        except ValueError:
            raise FleetciError(f"{self.what}: answer to {method} {path} is not JSON") from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def pages(
        self,
        path: str,
        field: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        max_pages: int = MAX_PAGES,
        truncated: Callable[[str], None] | None = None,
        get: Callable[[str, Mapping[str, Any] | None], httpx.Response] | None = None,
    ) -> Iterator[Any]:
        """Items of a paginated list (``field``: the list's key in an object answer; None: an array).

        ``get`` replaces the plain GET of each page (a caller's retries or its own error wording); the
        cap and ``truncated`` are :func:`paginate`'s.
        """

        def fetch(url: str, page_params: Mapping[str, Any] | None) -> tuple[bytes, Mapping[str, str]]:
            r = get(url, page_params) if get else self.response("GET", url, params=page_params)
            return r.content, r.headers

        return paginate(
            fetch, path, what=self.what, field=field, params=params, max_pages=max_pages, truncated=truncated
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> JsonApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_HEALTH_BYTES = 64 * 1024  # a health answer larger than this is not from one of our servers


def get_health(url: str, uds: str | Path | None = None, timeout: float = 2.0) -> dict[str, object]:
    """One GET of a JSON health endpoint, no retries: the answer (a JSON object) when it is 200, else a
    one-line :class:`FleetciError` (refused, HTTP status, oversize, not JSON). Every health probe of the
    project goes through here (``wait_healthy`` polls it)."""
    import httpx

    try:
        with client(uds=uds, timeout=timeout) as http, http.stream("GET", url) as r:
            body = b""
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > MAX_HEALTH_BYTES:
                    raise FleetciError(f"its health answer is over {MAX_HEALTH_BYTES} bytes")
    except (httpx.HTTPError, OSError) as exc:  # refused, timed out, a socket we may not open
        raise FleetciError(describe(exc)) from None
    if r.status_code != 200:
        raise FleetciError(f"HTTP {r.status_code}")
    try:
        data = json.loads(body)
    except ValueError:
        raise FleetciError("its health answer is not JSON") from None
    if not isinstance(data, dict):
        raise FleetciError("its health answer is not a JSON object")
    return data


def wait_healthy(
    url: str, uds: str | Path | None = None, timeout: float = 30.0, alive: object = None
) -> dict[str, object]:
    """Poll :func:`get_health` until it answers; ``alive`` (a Popen) stops the wait if it exits."""
    from fleetci.wait import WaitTimeout, wait_until

    last = ["no answer"]

    def healthy() -> dict[str, object] | None:
        poll = getattr(alive, "poll", None)
        if poll is not None and poll() is not None:
            raise FleetciError(f"process exited with code {poll()} before it became healthy")
        try:
            return get_health(url, uds)
        except FleetciError as exc:
            last[0] = str(exc)
        return None

    try:
        return wait_until(healthy, timeout=timeout, what=f"{url} to be healthy", last=lambda: last[0])
    except WaitTimeout:
        raise FleetciError(f"{url} not healthy after {timeout:g}s ({last[0]})") from None


def primary_ip() -> str:
    """This machine's outbound IPv4 address (what other runners can dial); 127.0.0.1 when offline."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET address: connect() on UDP sends no packet
        return str(s.getsockname()[0])
    return "127.0.0.1"


# -- servers ---------------------------------------------------------------------------------------------
# What a server of ours accepts by default: GitHub's own request bodies are capped far higher (tens of
# MB for a few upload endpoints), but nothing a CI client sends through us comes close to this.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Passed to ``web.AppRunner``: no per-request access log (a flood would fill the disk), and a refused
# body is read and discarded (never kept) for at most 2 s so the client sees its 413 instead of a reset.
RUNNER_OPTIONS: dict[str, object] = {"access_log": None, "lingering_time": 2.0}


# Builds an error body from (status, one-line message): a server that imitates a service answers in its shape.
ErrorShape = Callable[[int, str], dict[str, object]]


def error_response(
    status: int, message: str, *, shape: ErrorShape | None = None, **headers: str
) -> web.Response:
    """A one-line JSON error, shaped like GitHub's (``{"message": …}``), or by ``shape`` when given."""
    from aiohttp import web

    text = " ".join(message.split())[:500]
    body = shape(status, text) if shape is not None else {"message": text}
    resp = web.json_response(body, status=status, headers=headers)
    return resp


def guarded_app(
    max_body: int = DEFAULT_MAX_BODY_BYTES,
    body_limit: Callable[[web.Request], int] | None = None,
    *,
    shape: ErrorShape | None = None,
) -> web.Application:
    """An aiohttp application behind our guards.

    - A declared body over ``max_body`` is refused with 413 before a byte of it is read; an undeclared
      (chunked) one stops at ``max_body`` when the handler reads it (aiohttp's ``client_max_size``).
    - ``body_limit(request)``, when given, picks the declared-body cap per request instead: for a route
      that streams its body to disk under a cap of its own (large uploads), not for one that reads it whole.
    - An unexpected exception answers a one-line JSON 500 and logs one line: never a traceback.
    - ``shape`` builds those error bodies (an emulator answers in the shape of the service it imitates).
    """
    from aiohttp import web

    from fleetci.logs import quiet_server_logs

    quiet_server_logs()
    limit = max_body

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        declared = request.content_length
        cap = limit if body_limit is None else body_limit(request)
        if declared is not None and declared > cap:
            resp = error_response(
                413,
                f"request body of {declared} bytes is over this server's limit of {cap}",
                shape=shape,
            )
            resp.force_close()
            return resp
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPRequestEntityTooLarge:
            resp = error_response(
                413, f"request body is over this server's limit of {limit} bytes", shape=shape
            )
            resp.force_close()
            return resp
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            _server_log.error("%s %s failed", request.method, request.path, exc_info=exc)
            return error_response(500, f"internal error ({type(exc).__name__})", shape=shape)

    return web.Application(client_max_size=max_body, middlewares=[guard])


# -- parsing what a peer sent: one reading for every client and server of ours ----------------------------

MAX_ID = 2**63 - 1  # the largest id a SQLite INTEGER (or any signed 64-bit field) holds


def parse_id(text: str, maximum: int = MAX_ID) -> int | None:
    """A decimal number from a URL segment or a header (an id, a Content-Length), or None.

    Only ASCII digits, at most ``maximum``: never int()'s ValueError, and never what int() also takes
    (``+1``, `` 1``, ``1_0``, other scripts' digits) nor a length that costs time to convert.
    """
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None


class JSONTooDeep(ValueError):
    """JSON nested deeper than the reader allows (or than Python's parser can recurse)."""


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, counted iteratively and only up to ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("JSON object has a duplicate key")
    return data


def loads_strict(raw: bytes | str, max_depth: int | None = None, unique_keys: bool = False) -> Any:
    """JSON as RFC 8259 has it, from a peer we do not trust: ValueError (one line) for anything else.

    ``NaN``/``Infinity`` are refused (Python accepts them); nesting too deep for Python's recursive
    parser, or deeper than ``max_depth``, raises :class:`JSONTooDeep` instead of a RecursionError.
    ``unique_keys``: an object naming a key twice is a ValueError too (Python keeps the last one, other
    parsers the first: a proxy that reads a body it also forwards must not read it otherwise than they do).
    """
    try:
        hook = _unique_keys if unique_keys else None
        data = json.loads(raw, parse_constant=_not_json, object_pairs_hook=hook)
    except RecursionError:
        raise JSONTooDeep("JSON nested too deeply") from None
    if max_depth is not None and json_depth(data, max_depth) > max_depth:
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels")
    return data


def error_message(status: int, body: bytes) -> str:
    """The one-line reason of an HTTP error answer, for messages to users.

    The JSON ``message`` (ours and GitHub's shape) or ``error`` (older masters, registries' plain
    answers) or the first of ``errors`` as ``CODE: message`` (the OCI distribution spec's shape), else
    the body's text, else the status phrase.
    """
    text = body.decode("utf-8", errors="replace")
    reason = ""
    with contextlib.suppress(ValueError, RecursionError):
        data = json.loads(text)
        if isinstance(data, dict):
            reason = str(data.get("message") or data.get("error") or "") or _oci_error(data.get("errors"))
    reason = " ".join((reason or text[:200]).split())
    if not reason:
        from http import HTTPStatus

        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = f"HTTP {status}"
    return reason[:500]


def _oci_error(errors: object) -> str:
    """``{"errors": [{"code": "BLOB_UNKNOWN", "message": "…"}]}`` -> ``BLOB_UNKNOWN: …``."""
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    return ""
