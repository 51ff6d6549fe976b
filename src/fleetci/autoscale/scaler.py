"""The autoscaler: read queued jobs through the cache, decide per pool, call the provider.

Push for freshness, pull as the safety net: between full reads it long-polls the proxy's
``GET /_fleetci/changes`` (fleetci.cache.changes), which answers as soon as a webhook — received by this
proxy or by any proxy of the fleet — invalidated something; the autoscaler re-reads at once, and its
reads revalidate just the entries the webhook touched. Without a proxy, or with one that lacks the
endpoint, it simply reads every ``poll_interval`` seconds. Lost webhooks cost reaction time up to the
poll (plus the cache's window for queued lists), never a wrong count.

What a webhook wake costs stays bounded whatever the event rate: the first wake after a quiet spell runs
a cycle at once, a burst of them is one cycle per ``WAKE_SPACING_S``; a woken cycle re-reads the queued
lists only (scaling up needs them fresh) and the runner list (every page of it at 5,000 runners) at most
every ``RUNNERS_MAX_AGE_S`` seconds or on the poll. A failing provider is asked again after a per-pool
back-off, not on every wake.

A webhook storm must not spend the token's hourly budget either: while the budget GitHub reports on the
answers (``X-RateLimit-Remaining``, kept per window by :class:`~fleetci.autoscale.github.Budget`) is under
``budget_reserve``, a wake is remembered but its cycle skipped; the poll runs as usual (it is the safety
net), and so does the remembered wake once the window resets. With no ``api_url`` configured and no host
proxy at start, the well-known socket is looked for again on every poll: a proxy that starts later is
read through from then on.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fleetci.autoscale.github import RUN_STATUSES, Budget, GitHubReader, QueuedJob, Runner
from fleetci.autoscale.pools import Count, Decision, Planner, Pool, parse_pool, pool_for_job, pool_for_runner
from fleetci.autoscale.providers import CommandProvider, DockerProvider, Provider, ScaleRequest
from fleetci.autoscale.settings import UPSTREAM, AutoscaleOptions, AutoscaleSettings, autoscale_settings
from fleetci.cache.api import STATS_PATH
from fleetci.cache.changes import CHANGES_PATH, MAX_WAIT_S
from fleetci.cache.settings import WELL_KNOWN_SOCKET
from fleetci.config import load_config_file
from fleetci.errors import FleetciError, UsageError
from fleetci.http import ApiError, JsonApi, describe, loads_strict, redact_url
from fleetci.wait import wait_stepwise

Say = Callable[[str], None]
# a scale command running when the autoscaler is stopped may finish within this, then its process group is
# killed: below systemd's TimeoutStopSec=15 of the unit, which would kill the autoscaler itself
STOP_GRACE_S = 10.0
READERS = 8  # GETs of one cycle in flight at once (the proxy caps upstream concurrency per token itself)
WAKE_SPACING_S = 0.5  # woken cycles start at least this far apart: a burst of deliveries is one cycle
RUNNERS_MAX_AGE_S = 60.0  # a woken cycle re-reads the runner list only when it is older than this
RECALL_MIN_S = 30.0  # a pool whose runners differ from its desired count is asked again after max(poll, this)
BACKOFF_FIRST_S = 5.0  # a failing provider's pool waits this long, doubling up to the poll interval
SKIP_STATUSES = (403, 404, 410)  # a repository or run this token cannot read (any more): skipped, not fatal


def _stderr(line: str) -> None:
    print(f"fleetci autoscale: {line}", file=sys.stderr, flush=True)


def find_api_url(
    configured: str, sock: Path = Path(WELL_KNOWN_SOCKET), upstream: str = UPSTREAM
) -> tuple[str, str]:
    """The API to read through, and a note: the configured URL, else the host's cache proxy on its
    well-known socket when ``fleetci cache start`` would reuse it (same upstream, no shared scope, its TCP
    port answered by the process the socket vouches for: the token goes there), else the upstream."""
    if configured:
        return configured, ""
    if not sock.is_socket():
        return upstream, ""
    from fleetci.cache.hostproxy import find_host_proxy, planted
    from fleetci.cache.settings import cache_settings

    if why := planted(sock):  # found, not named: the same check as `fleetci cache start` makes
        return upstream, f"not reading through the host proxy: socket {sock} is not trusted ({why})"
    try:
        host, note = find_host_proxy(cache_settings({"host_proxy": str(sock), "upstream": upstream}, {}, {}))
    except FleetciError as exc:
        why = str(exc).split("; CACHE_HOST_PROXY=off")[0]  # a job's remedy, not this service's
        return upstream, f"not reading through the host proxy: {why}"
    if host is None:
        return upstream, note
    return host.api_url, f"reading through the host's cache proxy {host.api_url}" + (
        f" ({note})" if note else ""
    )


def is_fleetci_proxy(api_url: str) -> bool:
    from fleetci.cache.hostproxy import proxy_health

    try:
        proxy_health(api_url, timeout=2.0)
    except FleetciError:
        return False
    return True


@dataclass
class CacheView:
    """The proxy's own endpoints the autoscaler uses: the change counter and the stats for its log line."""

    api: JsonApi
    seq: int | None = None
    long_poll: bool = True  # False once the proxy lacks /_fleetci/changes (an older proxy)
    chunk: float = MAX_WAIT_S  # seconds one long poll may block (stop() takes effect after it)

    def current(self) -> int | None:
        if not self.long_poll:
            return None
        try:
            r = self.api.response("GET", f"{CHANGES_PATH}?wait=0", ok=(403, 404), timeout=10)
        except FleetciError:
            return None
        if r.status_code in (403, 404):
            self.long_poll = False
            return None
        seq = _seq(r.content)
        self.seq = seq if seq is not None else self.seq
        return self.seq

    def changed(self, remaining: float, stop: threading.Event) -> bool:
        """Wait up to ``remaining`` seconds (at most one long poll) for the counter to move."""
        if stop.is_set():
            return True
        if not self.long_poll or self.seq is None:
            return stop.wait(remaining) or stop.is_set()
        wait = min(remaining, self.chunk)
        try:
            r = self.api.response(
                "GET",
                f"{CHANGES_PATH}?after={self.seq}&wait={wait:.3f}",
                ok=(403, 404, 503),
                timeout=wait + 10,
            )
        except FleetciError:
            return stop.wait(min(remaining, 5.0)) or stop.is_set()  # the proxy restarts: poll on
        if r.status_code != 200:
            if r.status_code in (403, 404):  # an older proxy, or one reached by a name it does not answer
                self.long_poll = False
            return stop.wait(min(remaining, 1.0)) or stop.is_set()
        seq = _seq(r.content)
        if seq is None or seq == self.seq:
            return stop.is_set()
        self.seq = seq
        return True

    def stats(self) -> str:
        try:
            s = self.api.get(STATS_PATH, timeout=5)
        except FleetciError as exc:
            return f"cache stats unavailable ({exc})"
        if not isinstance(s, dict):
            return "cache stats unavailable"
        try:
            hits = sum(int(s.get(k) or 0) for k in ("local_hits", "peer_hits", "shared_hits"))
            n = {k: int(s.get(k) or 0) for k in ("revalidations", "misses", "api_calls_saved")}
            rate = float(s.get("hit_rate") or 0)
        except (TypeError, ValueError):
            return "cache stats unreadable"
        return (
            f"cache hits={hits} revalidated={n['revalidations']} charged={n['misses']} "
            f"saved={n['api_calls_saved']} hit_rate={rate:.1%}"
        )


def _printable(text: str, limit: int = 80) -> str:
    """Job labels come from workflow files (a pull request's author): no control characters into the log."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _seq(body: bytes) -> int | None:
    try:
        value = loads_strict(body).get("seq")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class BudgetGuard:
    """Skips woken cycles while the token's remaining budget is under ``reserve`` and its window has not
    reset (0: never); says one line when it engages and one when it releases."""

    reserve: int
    say: Say
    engaged: bool = False

    def _low(self, budget: Budget, now: float) -> bool:
        remaining, reset = budget.remaining, budget.reset
        return remaining is not None and remaining < self.reserve and (reset is None or now < reset)

    def allows_wake(self, budget: Budget, now: float) -> bool:
        """May a cycle woken by a change run now (``now``: epoch seconds, as the reset header)?"""
        low = self._low(budget, now)
        if low and not self.engaged:
            until = f" until its reset in {budget.reset - now:.0f}s" if budget.reset is not None else ""
            self.say(
                f"budget guard on: the token has {budget.remaining} calls left (reserve {self.reserve})"
                f"{until}: cycles woken by webhooks are skipped, the poll goes on"
            )
        elif self.engaged and not low:
            self.say(f"budget guard off: the token has {budget.remaining} calls left or its window reset")
        self.engaged = low
        return not low

    def reset_in(self, budget: Budget, now: float) -> float | None:
        """Seconds until the guard releases by itself (the window's reset), while engaged."""
        if not self._low(budget, now) or budget.reset is None:
            return None
        return max(0.0, budget.reset - now)


@dataclass
class Cycle:
    """What one cycle saw and did (``once()`` returns its decisions; this keeps the rest)."""

    decisions: list[Decision] = field(default_factory=list)
    unmatched: dict[tuple[str, ...], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    cancelled: bool = False  # stopped before every pool's provider call was made
    runners: dict[str, bool] = field(default_factory=dict)  # every runner read: name -> busy
    skipped: list[str] = field(default_factory=list)  # repositories/runs answered 403/404/410


class GitHubRunnerAutoscaler:
    """Seed 004's autoscaler on the cache: ``GitHubRunnerAutoscaler(owner="org", poll_interval=120).run()``.

    Keyword arguments are settings (``AutoscaleOptions``: ``scale_down_delay``, ``scale_cmd``,
    ``docker_image``, ``api_url``, ``token``, ``pools`` as strings or :class:`Pool`), above the
    environment and the config file, as flags are. ``provider`` replaces ``scale_cmd``/``docker_image``.
    """

    def __init__(
        self,
        owner: str | None = None,
        poll_interval: float | None = None,
        *,
        provider: Provider | None = None,
        settings: AutoscaleSettings | None = None,
        say: Say | None = None,
        clock: Callable[[], float] = time.monotonic,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        socket: Path | None = None,
        upstream: str = UPSTREAM,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = _settings_from(owner, poll_interval, options, env, config)
        if not settings.token:
            raise UsageError("no GitHub token: set GH_TOKEN or GITHUB_TOKEN")
        self.settings = settings
        self.say = say or _stderr
        self.clock = clock
        self.wall = time.time  # the reset header's clock
        self.socket = socket or Path(WELL_KNOWN_SOCKET)  # the host proxy's, when no api_url is set
        self.upstream = upstream
        self.api_url, self._note = find_api_url(settings.api_url, self.socket, upstream)
        if self._note:
            self.say(self._note)
        self._stop = threading.Event()
        self.provider = provider or _provider(settings, self._stop)
        self.reader = GitHubReader(self.api_url, settings.token, settings.owner)
        self.planner = Planner(
            settings.pools, settings.scale_down_delay, max(settings.poll_interval, RECALL_MIN_S)
        )
        self.cache: CacheView | None = None
        self._probe_cache()
        self.last = Cycle()
        self.cycles = 0
        self.stopped_by = ""  # the signal that stopped run() ("SIGTERM"), if one did
        self._waiting = False  # run() is in wait_for_change: a signal may end the wait at once
        self.woken = False  # the next cycle was woken by a change (not the poll): runners may stay cached
        self._runners: tuple[float, list[Runner]] | None = None  # when read, what
        self._backoff: dict[frozenset[str], tuple[float, float]] = {}  # pool -> (not before, last delay)
        self._skipped_said: frozenset[str] = frozenset()
        self.guard = BudgetGuard(settings.budget_reserve, self.say)
        self.wakes_skipped = 0  # wakes whose cycle the budget guard skipped
        self._pool = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="fleetci-autoscale")

    def _find_proxy(self) -> None:
        """No api_url configured and no host proxy found yet: look for it again (once per poll, when the
        autoscaler reads the API directly there are no wakes). A proxy that started after the autoscaler
        is read through from its next cycle on; said in one line."""
        if self.settings.api_url or self.api_url != self.upstream:
            return
        url, note = find_api_url("", self.socket, self.upstream)
        if url == self.api_url:
            if note and note != self._note:  # a new reason not to use it: said once, not every poll
                self.say(note)
            self._note = note
            return
        old = self.reader
        self.reader = GitHubReader(url, self.settings.token, self.settings.owner, budget=old.budget)
        self.reader.is_org = old.is_org
        old.close()
        self.api_url, self._note = url, note
        self.say(f"switched to the host proxy: {note}")

    def _probe_cache(self) -> None:
        """Use the proxy's long poll and stats once ``api_url`` answers as a fleetci proxy: probed at start
        and again each cycle until it does (after a reboot the proxy may bind after the autoscaler)."""
        if self.cache is None and self.api_url != UPSTREAM and is_fleetci_proxy(self.api_url):
            self.cache = CacheView(JsonApi(self.api_url, what=f"fleetci cache {redact_url(self.api_url)}"))

    def _current_runners(self, repos: list[str]) -> list[Runner]:
        """The runner list: read on the poll, and on a woken cycle only when older than the limit. A
        provider asked every cycle (docker) picks the containers to remove by these busy flags: for it
        the list is always read (a stale flag could remove a runner that just took a job)."""
        now = self.clock()
        stale_ok = not getattr(self.provider, "every_cycle", False)
        if (
            stale_ok
            and self.woken
            and self._runners is not None
            and now - self._runners[0] < RUNNERS_MAX_AGE_S
        ):
            return self._runners[1]
        found = self.reader.runners(repos)
        self._runners = (now, found)
        return found

    # -- one cycle --------------------------------------------------------------------------------------
    def once(self) -> list[Decision]:
        """Read, decide, call the provider for pools whose desired count changed (or whose runners still
        differ from it, now and then); the decisions."""
        self._find_proxy()
        self._probe_cache()
        if self.cache is not None and self.cache.seq is None:
            self.cache.current()  # before the reads: a change during them wakes the next wait at once
        s = self.settings
        cycle = Cycle()
        repos = self.reader.repositories()
        # each repository's reads are independent: a few at once, so a cycle woken by a webhook takes
        # about one round trip per step, not one per repository
        runners = self._pool.submit(self._current_runners, repos)
        lists = [(repo, status) for repo in repos for status in RUN_STATUSES]
        # queued runs, and in-progress ones whose matrix jobs may still wait (a run listed under both,
        # having started between the two reads, is counted once)
        found_runs = self._pool.map(
            self._skipping(lambda rs: self.reader.runs(*rs), cycle, lambda rs: str(rs[0])), lists
        )
        runs = list(dict.fromkeys(run for found in found_runs for run in found))
        jobs: list[QueuedJob] = [
            job
            for found in self._pool.map(self._skipping(self.reader.queued_jobs_of, cycle), runs)
            for job in found
        ]
        counts: dict[frozenset[str], Count] = {p.key: Count() for p in s.pools}
        for job in jobs:
            pool = pool_for_job(s.pools, job.labels)
            if pool is None:
                cycle.unmatched[job.labels] = cycle.unmatched.get(job.labels, 0) + 1
            else:
                counts[pool.key].queued += 1
        for runner in runners.result():
            cycle.runners[runner.name] = runner.busy and runner.status == "online"
            rpool = pool_for_runner(s.pools, runner.labels)
            if rpool is None or runner.status != "online":
                continue
            if runner.busy:
                counts[rpool.key].busy += 1
            else:
                counts[rpool.key].idle += 1
        now = self.clock()
        cycle.decisions = self.planner.plan(counts, now)
        every_cycle = bool(getattr(self.provider, "every_cycle", False))  # docker: heal exited containers
        for d in cycle.decisions:
            if self._stop.is_set():  # stopping: no new provider call (the pool is asked again at start)
                cycle.cancelled = True
                break
            if not (d.call or every_cycle):
                continue
            until, _ = self._backoff.get(d.pool.key, (0.0, 0.0))
            if now < until:
                continue  # a failing provider: asked again after its back-off, not on every wake
            self._apply(d, cycle, now)
        self.cycles += 1
        self.last = cycle
        self._log(cycle)
        return cycle.decisions

    step = once  # the seed's name for one cycle

    def _skipping(
        self, read: Callable[[Any], list[Any]], cycle: Cycle, name: Callable[[Any], str] | None = None
    ) -> Callable[[Any], list[Any]]:
        """``read`` of one repository or run, where 403/404/410 (deleted, transferred, not readable with
        this token) skips it and is recorded: one repository never stops the organization's scaling."""

        def one(item: Any) -> list[Any]:
            try:
                return read(item)
            except ApiError as exc:
                if exc.status not in SKIP_STATUSES:
                    raise
                what = name(item) if name else "/".join(str(x) for x in item)  # a run: repo/id
                cycle.skipped.append(f"{_printable(what)}: HTTP {exc.status}")
                return []

        return one

    def _failed(self, d: Decision, cycle: Cycle, now: float, what: str) -> None:
        _, last = self._backoff.get(d.pool.key, (0.0, 0.0))
        delay = min(max(self.settings.poll_interval, BACKOFF_FIRST_S), max(BACKOFF_FIRST_S, 2 * last))
        self._backoff[d.pool.key] = (now + delay, delay)
        cycle.errors.append(f"pool {d.pool.name}: {what}")
        self.say(f"error: pool {d.pool.name}: {what} (asked again in {delay:g}s)")

    def _apply(self, d: Decision, cycle: Cycle, now: float) -> None:
        if self.provider is None:
            self.planner.provided(d.pool, d.desired, now)  # no provider: the decision is only logged
            return
        request = ScaleRequest(
            self.settings.owner,
            list(d.pool.labels),
            d.current,
            d.desired,
            d.queued,
            d.busy,
            d.idle,
            runners=cycle.runners,
        )
        try:
            self.provider.scale(request)
        except FleetciError as exc:
            self._failed(d, cycle, now, str(exc))
            return
        except Exception as exc:  # an embedded provider's bug must not end the loop either
            self._failed(d, cycle, now, f"provider failed: {describe(exc)}")
            return
        self._backoff.pop(d.pool.key, None)
        self.planner.provided(d.pool, d.desired, now)

    def _log(self, cycle: Cycle) -> None:
        pools = "; ".join(d.line() for d in cycle.decisions)
        stats = self.cache.stats() if self.cache is not None else "no cache proxy (reading the API directly)"
        cancelled = " (stopping: the remaining pools were not asked)" if cycle.cancelled else ""
        self.say(f"cycle {self.cycles}: {pools} | {stats}{cancelled}")
        if cycle.unmatched:
            shown = ", ".join(
                f"{_printable('+'.join(k)) or '(none)'} x{n}" for k, n in sorted(cycle.unmatched.items())[:5]
            )
            total = sum(cycle.unmatched.values())
            self.say(f"{total} queued job(s) match no pool (not scaled): {shown}")
        skipped = frozenset(cycle.skipped)
        if skipped and skipped != self._skipped_said:  # said when the set changes, not every cycle
            shown = ", ".join(sorted(skipped)[:5])
            self.say(f"skipped {len(skipped)} repository/run read(s) this token cannot make: {shown}")
        self._skipped_said = skipped

    # -- the loop ---------------------------------------------------------------------------------------
    def wait_for_change(self, timeout: float) -> bool:
        """Until the proxy reports a change (True) or ``timeout`` passed (False); False at once if stopped."""
        if self.cache is None:
            self._stop.wait(timeout)
            return False
        woke = wait_stepwise(
            lambda remaining: self.cache.changed(remaining, self._stop) if self.cache else None,
            timeout=timeout,
        )
        return bool(woke) and not self._stop.is_set()

    def _wait_next(self) -> bool:
        """Wait for a change (True: a woken cycle is due) or the poll (False). Under the budget reserve a
        wake is remembered but not run: the wait goes on to the poll, or to the window's reset when that
        comes first (then the remembered wake's cycle runs)."""
        deadline = self.clock() + self.settings.poll_interval
        pending = False
        while not self._stop.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return False  # the poll
            reset_in = self.guard.reset_in(self.reader.budget, self.wall()) if pending else None
            timeout = left if reset_in is None else min(left, reset_in)
            woke = self.wait_for_change(timeout)
            if self._stop.is_set():
                return False
            if not woke and (not pending or timeout >= left):
                return False  # the poll (a wake remembered till now runs as the poll's cycle)
            if self.guard.allows_wake(self.reader.budget, self.wall()):
                return True
            pending = True
            self.wakes_skipped += 1
        return False

    def run(self, cycles: int | None = None, handle_signals: bool = True) -> int:
        """Cycle until :meth:`stop`, SIGTERM or SIGINT (or ``cycles`` cycles); a failing cycle is logged and
        retried. A signal lets the current cycle end: a scale command in flight gets ``STOP_GRACE_S`` to
        finish, then its process group is killed; no pool is asked after it. Logs "stopped" once."""
        done = 0
        started: float | None = None
        with self.signals_handled(handle_signals):
            try:
                while not self._stop.is_set():
                    if self.woken and started is not None:
                        # coalesce a burst: the first wake after a quiet spell runs at once, the next wait
                        spacing = WAKE_SPACING_S - (self.clock() - started)
                        if spacing > 0:
                            self._waiting = True
                            try:
                                if self._stop.wait(spacing):
                                    break
                            finally:
                                self._waiting = False
                    started = self.clock()
                    if self.cache is not None:
                        self.cache.current()
                    if self._stop.is_set():
                        break
                    try:
                        self.once()
                    except FleetciError as exc:
                        self.say(f"error: cycle failed: {exc} (retried in {self.settings.poll_interval:g}s)")
                    except Exception as exc:  # an answer of a shape nobody foresaw must not end the daemon
                        self.say(
                            f"error: cycle failed: {describe(exc)} "
                            f"(retried in {self.settings.poll_interval:g}s)"
                        )
                    self.guard.allows_wake(self.reader.budget, self.wall())  # said as the reads moved it
                    done += 1
                    if cycles is not None and done >= cycles:
                        return done
                    self._waiting = True
                    try:
                        self.woken = self._wait_next()
                    finally:
                        self._waiting = False
            except _Interrupted:
                pass  # a signal ended the wait between two cycles
            self.say(f"stopped ({self.stopped_by or 'stop()'}) after {self.cycles} cycle(s)")
        return done

    @contextlib.contextmanager
    def signals_handled(self, enabled: bool = True) -> Iterator[None]:
        """SIGTERM/SIGINT stop the loop instead of ending the process mid-cycle (main thread only: elsewhere
        Python cannot install handlers); the previous handlers come back afterwards."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.stopped_by = self.stopped_by or signal.Signals(signum).name
            self._stop.set()
            if self._waiting:  # between cycles: nothing is half done, leave the (long) poll at once
                self._waiting = False
                raise _Interrupted

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        self._pool.shutdown(wait=True)
        self.reader.close()
        if self.cache is not None:
            self.cache.api.close()


def _settings_from(
    owner: str | None,
    poll_interval: float | None,
    options: dict[str, Any],
    env: Mapping[str, str] | None,
    config: Mapping[str, Any] | None,
) -> AutoscaleSettings:
    known = {s.name for s in AutoscaleOptions.settings}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"GitHubRunnerAutoscaler: unknown setting(s) {', '.join(unknown)}")
    flags: dict[str, Any] = {k: v for k, v in options.items() if k != "pools" and v is not None}
    flags = {k: str(v) for k, v in flags.items()}
    if owner is not None:
        flags["owner"] = owner
    if poll_interval is not None:
        flags["poll_interval"] = str(poll_interval)
    pools = options.get("pools")
    if pools is not None:
        items = [pools] if isinstance(pools, (str, Pool)) else list(pools)
        flags["pools"] = [p if isinstance(p, str) else f"{p.name}:min={p.min}:max={p.max}" for p in items]
    return autoscale_settings(flags, load_config_file(None) if config is None else config, env)


class _Interrupted(BaseException):
    """Raised by the signal handler to leave the wait between cycles (never caught as an error)."""


def _provider(settings: AutoscaleSettings, stop: threading.Event | None = None) -> Provider | None:
    if settings.scale_cmd:
        grace = min(settings.scale_cmd_timeout, STOP_GRACE_S)
        return CommandProvider(settings.scale_cmd, settings.scale_cmd_timeout, stop=stop, grace=grace)
    if settings.docker_image:
        return DockerProvider(
            settings.docker_image,
            settings.docker_host,
            settings.docker_network,
            pools=[p.name for p in settings.pools],
        )
    return None


__all__ = ["Cycle", "GitHubRunnerAutoscaler", "find_api_url", "parse_pool"]
