"""The proxy's live dashboard: one self-contained page and the JSON it polls.

The page is a constant (no server-side templating, so nothing a client sent can end up in its markup);
its script fetches ``/_fleetci/dashboard.json`` every few seconds and writes every value with
``textContent`` or as SVG attributes it builds itself. No CDN, no external font or image: it works
offline, on an air-gapped runner and through an SSH tunnel. The Content-Security-Policy allows only
this page's own inline script and style (by hash) and requests to its own origin, so even a value that
slipped through could not run as code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Any, TypedDict

from fleetci.cache.activity import EndpointRow, MinuteBucket
from fleetci.cache.api import CacheStats
from fleetci.cache.engine import CacheEngine
from fleetci.http import redact_url

REFRESH_S = 5
CREDENTIALS_SHOWN = 20
LABEL_CHARS = 12
# Random per process: a label names a credential on this page only. The scope hash itself uses a fixed
# salt (every proxy of a fleet must compute the same cache keys), so showing a prefix of it would give
# readers a stable identifier to follow across restarts and to check a guessed token against.
LABEL_KEY = secrets.token_bytes(32)


def label_of(scope: str) -> str:
    """The dashboard's name for a credential: an HMAC of its scope under this process's random key."""
    return hmac.new(LABEL_KEY, scope.encode(), hashlib.sha256).hexdigest()[:LABEL_CHARS]


class CredentialRow(TypedDict):
    label: str
    resource: str | None
    limit: int | None
    remaining: int | None
    used: int | None
    reset: float | None
    blocked_for_s: float
    reason: str


class Dashboard(TypedDict):
    """``GET /_fleetci/dashboard.json``."""

    generated_at: float
    refresh_s: int
    stats: CacheStats
    minutes: list[MinuteBucket]
    credentials: list[CredentialRow]
    endpoints: list[EndpointRow]
    peers: dict[str, Any]
    backend: dict[str, Any]


def snapshot(engine: CacheEngine, peers: dict[str, Any]) -> Dashboard:
    """Everything the page shows; credentials by hashed label only (never a token), lowest budget first."""
    now = engine.clock()
    creds: list[CredentialRow] = []
    for scope, s in engine.limits.scopes.items():
        if s.remaining is None and s.blocked_until <= now:
            continue
        creds.append(
            {
                "label": label_of(scope),
                "resource": s.resource,
                "limit": s.limit,
                "remaining": s.remaining,
                "used": s.used,
                "reset": s.reset,
                "blocked_for_s": round(max(0.0, s.blocked_until - now), 1),
                "reason": s.reason if s.blocked_until > now else "",
            }
        )
    creds.sort(key=lambda c: (c["remaining"] if c["remaining"] is not None else 1 << 62, c["label"]))
    store = engine.store
    return {
        "generated_at": round(time.time(), 3),
        "refresh_s": REFRESH_S,
        "stats": engine.stats(),
        "minutes": engine.activity.minutes(),
        "credentials": creds[:CREDENTIALS_SHOWN],
        "endpoints": engine.activity.endpoints(),
        "peers": peers,
        "backend": {
            "kind": "sqlite",
            "entries": len(store),
            "bytes": store.total_bytes,
            "memory_tier_bytes": store.memory_tier_bytes,
            "memory_tier_max_bytes": store.memory_bytes,
            # the shared store (CACHE_BACKEND): off, ok or degraded, and its URL without userinfo
            "shared": engine.shared.state if engine.shared is not None else "off",
            "shared_url": redact_url(engine.settings.backend),
        },
    }


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# The page ships as package data (dashboard.html): one file to open in an editor or a browser.
PAGE = (Path(__file__).parent / "dashboard.html").read_bytes()
_TEXT = PAGE.decode()
SCRIPT = _TEXT.split("<script>", 1)[1].split("</script>", 1)[0]
STYLE = _TEXT.split("<style>", 1)[1].split("</style>", 1)[0]
CSP = (
    f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
