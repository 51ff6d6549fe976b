"""What the dashboard shows over time: outcomes per minute and the endpoints that cost upstream calls.

Both are bounded whatever clients send: the minute ring keeps the last hour (60 buckets of a fixed set of
outcomes), and the endpoint table keeps at most ``ENDPOINTS_MAX`` path templates. Paths are templated
(owners, repositories, numbers, SHAs and ref names become ``{…}``) so a poller that walks run IDs shows
as one row, and when the table is full the least charged row makes room, which keeps the rows that cost
calls without letting a flood of distinct URLs grow the table.
"""

from __future__ import annotations

import functools
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict
from urllib.parse import unquote

RING_MINUTES = 60
ENDPOINTS_MAX = 32
SEGMENT_MAX = 64  # characters of one literal path segment shown
TEMPLATE_MAX = 200  # characters of one template
# Outcomes the chart stacks (engine.Outcome values; REFUSED answers never reach the counters).
OUTCOMES = ("HIT", "PEER", "SHARED", "REVALIDATED", "COALESCED", "STALE", "MISS", "BYPASS")
# Path words followed by a name the client chooses: /orgs/{org}, /branches/{name}, …
_NAMED_AFTER = {
    "orgs": "{org}",
    "users": "{user}",
    "enterprises": "{enterprise}",
    "teams": "{team}",
    "branches": "{name}",
    "tags": "{name}",
    "labels": "{name}",
    "environments": "{name}",
    "secrets": "{name}",
    "variables": "{name}",
    "members": "{user}",
    "collaborators": "{user}",
    "memberships": "{user}",
    "heads": "{ref}",
    "topics": "{name}",
}
_NUMBER = re.compile(r"[0-9]+")
_SHA = re.compile(r"[0-9a-fA-F]{7,64}")


@functools.lru_cache(maxsize=1024)
def template(target: str) -> str:
    """``/repos/octo/api/actions/runs/42?page=2`` -> ``/repos/{owner}/{repo}/actions/runs/{id}``."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    parts = [unquote(p) for p in path.split("/")[1:]]
    out: list[str] = []
    i = 0
    while i < len(parts):
        seg = parts[i]
        prev = parts[i - 1] if i else ""
        if i == 1 and prev == "repos":
            out += ["{owner}", "{repo}"] if i + 1 < len(parts) else ["{owner}"]
            i += 2
            continue
        if prev in ("contents", "refs"):
            out.append("{path}")  # /contents/{path...} and /git/refs/{ref...}: the rest is one name
            break
        if _NUMBER.fullmatch(seg):
            out.append("{id}")
        elif len(seg) >= 7 and _SHA.fullmatch(seg) and any(c.isdigit() for c in seg):
            out.append("{sha}")
        elif prev in _NAMED_AFTER:
            out.append(_NAMED_AFTER[prev])
        else:
            out.append(seg[:SEGMENT_MAX])
        i += 1
    return ("/" + "/".join(out))[:TEMPLATE_MAX]


class MinuteBucket(TypedDict):
    t: int  # the minute's start (unix seconds)
    counts: dict[str, int]


class EndpointRow(TypedDict):
    path: str
    charged: int
    saved: int


@dataclass
class _Row:
    charged: int = 0
    saved: int = 0


class Activity:
    """Per-minute outcome counts for the last hour and the top endpoints by charged upstream calls."""

    def __init__(self, clock: Callable[[], float] = time.time, max_endpoints: int = ENDPOINTS_MAX) -> None:
        self.clock = clock
        self.max_endpoints = max_endpoints
        self._minutes: deque[tuple[int, dict[str, int]]] = deque(maxlen=RING_MINUTES)
        self._endpoints: dict[str, _Row] = {}

    def _bucket(self) -> dict[str, int]:
        minute = int(self.clock() // 60) * 60
        if not self._minutes or self._minutes[-1][0] != minute:
            self._minutes.append((minute, dict.fromkeys(OUTCOMES, 0)))
        return self._minutes[-1][1]

    def count(self, outcome: str) -> None:
        bucket = self._bucket()
        if outcome in bucket:
            bucket[outcome] += 1

    def _row(self, target: str) -> _Row:
        name = template(target)
        row = self._endpoints.get(name)
        if row is None:
            if len(self._endpoints) >= self.max_endpoints:
                # The least charged row makes room: a flood of one-off URLs churns that one slot while
                # the rows that cost real calls stay (and keep exact counts).
                rows = self._endpoints
                del rows[min(rows, key=lambda k: (rows[k].charged, rows[k].saved))]
            row = _Row()
            self._endpoints[name] = row
        return row

    def charged(self, target: str) -> None:
        """An upstream call GitHub counts against the token (anything but a 304)."""
        self._row(target).charged += 1

    def saved(self, target: str) -> None:
        """A request answered without a charged call (hit, peer, coalesced, stale, 304)."""
        self._row(target).saved += 1

    def minutes(self) -> list[MinuteBucket]:
        """The last hour, oldest first; minutes without traffic are absent (the page fills them)."""
        now = int(self.clock() // 60) * 60
        return [{"t": t, "counts": dict(c)} for t, c in self._minutes if now - t < RING_MINUTES * 60]

    def endpoints(self, limit: int = 10) -> list[EndpointRow]:
        rows = sorted(self._endpoints.items(), key=lambda kv: (-kv[1].charged, -kv[1].saved, kv[0]))
        return [{"path": k, "charged": r.charged, "saved": r.saved} for k, r in rows[:limit]]
