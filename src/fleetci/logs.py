"""One-line, rate-limited logging for servers that strangers can reach.

A hostile client can make aiohttp log a ~700-byte traceback per request (oversize headers, garbage
request lines); thousands of those fill a runner's disk. Every server of ours logs such events as one
line, and the same kind of line at most once per ``window`` seconds, with a count of what it held back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict

WINDOW_S = 10.0
_KEYS_MAX = 256
# aiohttp's parser errors quote the offending request bytes (``b'token ghp_…'`` for an oversize
# Authorization line): everything from the quote on stays out of the log.
_ECHOED_BYTES = re.compile(r"""\bb['"].*""", re.DOTALL)


def one_line(exc: BaseException | None, withhold: bool = False) -> str:
    """``Type: text`` on one line. ``withhold``: the type and HTTP status only — for errors raised while
    parsing a stranger's request, whose text quotes that request (a token in a query or header) in
    forms that differ between aiohttp's C and pure-Python parsers."""
    if exc is None:
        return ""
    if withhold:
        code = getattr(exc, "code", None)
        return f"{type(exc).__name__}" + (f" (HTTP {code})" if isinstance(code, int) else "")
    text = " ".join(_ECHOED_BYTES.sub("<request bytes withheld>", str(exc)).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


class OneLineRateLimited(logging.Filter):
    """Strip tracebacks to one line and let each distinct message through once per window."""

    def __init__(self, window: float = WINDOW_S, clock: object = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            record.msg = f"{record.getMessage()}: {one_line(exc, record.name.startswith('aiohttp.'))}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        key = f"{record.name}:{record.levelno}:{type(exc).__name__ if exc else record.msg}"
        now = float(self.clock())  # type: ignore[operator]
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.window:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            held = last[1] if last is not None else 0
            self._seen[key] = (now, 0)
            self._seen.move_to_end(key)
            while len(self._seen) > _KEYS_MAX:
                self._seen.popitem(last=False)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like this suppressed)"
            record.args = None
        return True


# A filter on a logger sees only that logger's own records, not its children's: name each one.
SERVER_LOGGERS = (
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.access",
    "fleetci.cache",
    "fleetci.buildfarm",
    "fleetci.server",
)


def quiet_server_logs(names: tuple[str, ...] = SERVER_LOGGERS) -> None:
    """Install the filter on aiohttp's server-side loggers and our servers' own (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineRateLimited) for f in logger.filters):
            logger.addFilter(OneLineRateLimited())
