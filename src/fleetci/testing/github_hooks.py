"""Webhooks of the GitHub emulator: repository and organization hooks, their deliveries, redelivery.

Every change of the world (``GitHubEmulator._bump``) is compared with the last one seen; new jobs and
runs, and jobs and runs changing status, become ``workflow_job`` / ``workflow_run`` deliveries to the
hooks of that repository and of its organization, signed like GitHub's (``X-Hub-Signature-256``,
HMAC-SHA256 of the body with the hook's secret) and sent by one background thread. Payloads follow the
official webhook description (npm ``@octokit/openapi-webhooks``; the tests check them).

Loss is part of the model: ``webhook_drop_rate`` of first attempts are recorded as failed and never
sent, ``webhook_delay_ms`` delays every delivery. As on GitHub, failed deliveries stay listed
(``GET …/hooks/{id}/deliveries``) and can be redelivered (``POST …/deliveries/{id}/attempts``).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetci.testing import github_data as gd
from fleetci.testing.github_data import JSON, Repo, World


class _Config(Protocol):
    @property
    def seed(self) -> int | None: ...
    @property
    def webhook_drop_rate(self) -> float: ...
    @property
    def webhook_delay_ms(self) -> float: ...


class GitHubEmulator(Protocol):
    """What the hooks need of ``fleetci.testing.github.GitHubEmulator`` (which imports this module)."""

    @property
    def config(self) -> _Config: ...
    @property
    def _world(self) -> World: ...


HOOK_EVENTS = frozenset({"*", "workflow_job", "workflow_run", "ping", "push", "repository", "check_run"})
DELIVERY_TIMEOUT_S = 10.0  # GitHub gives a receiver 10 seconds
MAX_HOOKS = 20  # per repository / organization, as GitHub allows
MAX_DELIVERIES = 10_000  # kept for listing and redelivery; older ones are forgotten
USER_AGENT = "GitHub-Hookshot/fleetci"


class HookError(Exception):
    """A request about hooks GitHub would refuse: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Hook:
    id: int
    owner: str
    repo: Repo | None  # None: an organization hook
    url: str  # where deliveries go
    secret: str
    events: list[str]
    active: bool
    content_type: str
    api_base: str  # the emulator's base URL, as the client that created the hook saw it
    created_at: float
    updated_at: float
    last_code: int | None = None
    last_status: str = "unused"


@dataclass
class Delivery:
    id: int
    guid: str
    hook_id: int
    event: str
    action: str | None
    repository_id: int | None
    body: bytes
    headers: dict[str, str]
    redelivery: bool
    due: float  # monotonic time it is sent at
    delivered_at: float = 0.0
    duration: float = 0.0
    status_code: int = 0
    status: str = "pending"
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str = ""


class Hooks:
    """The hooks of one emulator. The world's lock guards hooks and snapshots; ``_lock`` the deliveries."""

    def __init__(self, emulator: GitHubEmulator) -> None:
        self.emu = emulator
        self.hooks: dict[int, Hook] = {}
        self.deliveries: dict[int, Delivery] = {}
        self._ids = itertools.count(1)
        self._delivery_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._due: list[tuple[float, int]] = []
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._jobs: dict[int, str] = {}
        self._runs: dict[int, str] = {}
        self._dice = random.Random(emulator.config.seed)
        self.sent = 0
        self.dropped = 0

    # -- the world changed -------------------------------------------------------------------------------

    def snapshot(self) -> None:
        w = self.emu._world
        self._jobs = {j.id: j.status for j in w.jobs.values()}
        self._runs = {r.id: r.status for r in w.runs.values()}

    def after_change(self) -> None:
        """Called with the world's lock held after every change: deliver what changed since the last."""
        if not self.hooks:
            return
        w = self.emu._world
        events: list[tuple[str, str, Repo, Callable[[str], JSON]]] = []
        for run in sorted(w.runs.values(), key=lambda r: r.id):
            before = self._runs.get(run.id)
            if before == run.status:
                continue
            repo = w.repos_by_id[run.repo_id]
            actions = ["requested"] if before is None else []
            if run.status in ("in_progress", "completed") and before != "in_progress":
                actions.append("in_progress")
            if run.status == "completed":
                actions.append("completed")
            for action in actions:
                events.append(("workflow_run", action, repo, self._run_payload(run.id, action)))
        for job in sorted(w.jobs.values(), key=lambda j: j.id):
            before = self._jobs.get(job.id)
            if before == job.status:
                continue
            repo = w.repos_by_id[w.runs[job.run_id].repo_id]
            actions = ["queued"] if before is None else []
            if job.status in ("in_progress", "completed") and before != "in_progress":
                actions.append("in_progress")
            if job.status == "completed":
                actions.append("completed")
            for action in actions:
                events.append(("workflow_job", action, repo, self._job_payload(job.id, action)))
        self.snapshot()
        for event, action, repo, payload in events:
            for hook in self._hooks_for(repo, event):
                self._enqueue(hook, event, action, repo.id, payload(hook.api_base))

    def _hooks_for(self, repo: Repo, event: str) -> list[Hook]:
        return [
            h
            for h in self.hooks.values()
            if h.active
            and (event in h.events or "*" in h.events)
            and (h.repo.id == repo.id if h.repo is not None else h.owner.lower() == repo.owner.lower())
        ]

    # -- payloads ----------------------------------------------------------------------------------------

    def _common(self, base: str, repo: Repo) -> JSON:
        w = self.emu._world
        owner = w.ensure_user(repo.owner)
        repository = gd.repository(base, base, repo, owner, "full", None)
        if repository.get("temp_clone_token") is None:  # the REST shape allows null; webhooks leave it out
            repository.pop("temp_clone_token", None)
        out: JSON = {
            "repository": repository,
            "sender": gd.simple_user(
                base, w.ensure_user(repo.owner if owner.type == "User" else "fleet-bot"), base
            ),
        }
        if owner.type == "Organization":
            out["organization"] = _org_simple(base, owner)
        return out

    def _job_payload(self, job_id: int, action: str) -> Callable[[str], JSON]:
        w = self.emu._world
        job = w.jobs[job_id]
        run = w.runs[job.run_id]
        repo = w.repos_by_id[run.repo_id]
        wf = w.workflows[run.workflow_id]

        def build(base: str) -> JSON:  # called at once, under the world's lock: the job as it is now
            body = gd.job(base, base, job, run, repo, wf)
            if action != "completed":  # the payload says the state its action names
                body.update({"status": action, "conclusion": None, "completed_at": None})
            return {"action": action, "workflow_job": body, **self._common(base, repo)}

        return build

    def _run_payload(self, run_id: int, action: str) -> Callable[[str], JSON]:
        w = self.emu._world
        run = w.runs[run_id]
        repo = w.repos_by_id[run.repo_id]
        wf = w.workflows[run.workflow_id]

        def build(base: str) -> JSON:
            embedded = gd.repository(base, base, repo, w.ensure_user(repo.owner), "embedded", None)
            body = gd.workflow_run(
                base, base, run, repo, embedded, wf, gd.simple_user(base, w.ensure_user(run.actor), base)
            )
            if action != "completed":
                body.update({"status": "queued" if action == "requested" else action, "conclusion": None})
            return {
                "action": action,
                "workflow": gd.workflow(base, base, wf, repo),
                "workflow_run": body,
                **self._common(base, repo),
            }

        return build

    # -- deliveries --------------------------------------------------------------------------------------

    def _enqueue(
        self, hook: Hook, event: str, action: str | None, repo_id: int | None, payload: JSON
    ) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        guid = str(uuid.UUID(int=self._dice.getrandbits(128), version=4))
        self._send(hook, event, action, repo_id, body, guid, redelivery=False)

    def _send(
        self,
        hook: Hook,
        event: str,
        action: str | None,
        repo_id: int | None,
        body: bytes,
        guid: str,
        redelivery: bool,
    ) -> Delivery:
        cfg = self.emu.config
        target_type = "repository" if hook.repo is not None else "organization"
        target_id = hook.repo.id if hook.repo is not None else self.emu._world.ensure_user(hook.owner).id
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": guid,
            "X-GitHub-Hook-ID": str(hook.id),
            "X-GitHub-Hook-Installation-Target-ID": str(target_id),
            "X-GitHub-Hook-Installation-Target-Type": target_type,
        }
        if hook.secret:
            headers["X-Hub-Signature"] = (
                "sha1=" + hmac.new(hook.secret.encode(), body, hashlib.sha1).hexdigest()
            )
            headers["X-Hub-Signature-256"] = (
                "sha256=" + hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
            )
        with self._lock:
            d = Delivery(
                next(self._delivery_ids),
                guid,
                hook.id,
                event,
                action,
                repo_id,
                body,
                headers,
                redelivery,
                time.monotonic() + cfg.webhook_delay_ms / 1000.0,
            )
            self.deliveries[d.id] = d
            while len(self.deliveries) > MAX_DELIVERIES:
                del self.deliveries[next(iter(self.deliveries))]
            if not redelivery and self._dice.random() < cfg.webhook_drop_rate:
                # Lost: GitHub could not deliver it (it stays listed as failed, for redelivery).
                d.delivered_at, d.status_code, d.status = time.time(), 0, "failed to connect to host"
                self.dropped += 1
                hook.last_code, hook.last_status = 0, "failed"
                return d
            heapq.heappush(self._due, (d.due, d.id))
            self._wake.notify()
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="emulator-webhooks", daemon=True)
                self._thread.start()
        return d

    def redeliver(self, hook: Hook, delivery_id: int) -> Delivery:
        with self._lock:
            d = self.deliveries.get(delivery_id)
        if d is None or d.hook_id != hook.id:
            raise HookError(404, "Not Found")
        return self._send(hook, d.event, d.action, d.repository_id, d.body, d.guid, redelivery=True)

    def ping(self, hook: Hook) -> Delivery:
        w = self.emu._world
        base = hook.api_base
        payload: JSON = {
            "zen": "Keep it logically awesome.",
            "hook_id": hook.id,
            "hook": self.hook_json(hook),
        }
        if hook.repo is not None:
            payload.update(self._common(base, hook.repo))
        else:
            payload["organization"] = _org_simple(base, w.ensure_user(hook.owner))
            payload["sender"] = gd.simple_user(base, w.ensure_user("fleet-bot"), base)
        body = json.dumps(payload, separators=(",", ":")).encode()
        guid = str(uuid.UUID(int=self._dice.getrandbits(128), version=4))
        return self._send(
            hook, "ping", None, hook.repo.id if hook.repo else None, body, guid, redelivery=False
        )

    def open(self) -> None:
        """Deliveries may start a thread again (the server started, or restarted after :meth:`close`)."""
        with self._lock:
            self._closed = False

    def close(self) -> None:
        """End the delivery thread (the emulator server stops): what is still due is not sent.
        Idempotent; a delivery in progress finishes first (bounded by its timeout)."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=DELIVERY_TIMEOUT_S + 5)

    def _run(self) -> None:
        from fleetci.http import client

        with client(timeout=DELIVERY_TIMEOUT_S) as http:
            while True:
                with self._lock:
                    while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                        wait = self._due[0][0] - time.monotonic() if self._due else None
                        self._wake.wait(wait)
                    if self._closed:
                        return
                    _, ident = heapq.heappop(self._due)
                    d = self.deliveries.get(ident)
                    hook = self.hooks.get(d.hook_id) if d is not None else None
                if d is None or hook is None:
                    continue
                self._deliver(http, hook, d)

    def _deliver(self, http: Any, hook: Hook, d: Delivery) -> None:
        import httpx

        started = time.monotonic()
        try:
            r = http.post(hook.url, content=d.body, headers=d.headers)
            code, status = r.status_code, "OK" if r.is_success else f"Invalid HTTP Response: {r.status_code}"
            rheaders, rbody = dict(r.headers), r.text[:1000]
        except httpx.HTTPError as exc:
            code, status, rheaders, rbody = 0, f"failed to connect to host: {type(exc).__name__}", {}, ""
        with self._lock:
            d.delivered_at, d.duration = time.time(), round(time.monotonic() - started, 3)
            d.status_code, d.status, d.response_headers, d.response_body = code, status, rheaders, rbody
            hook.last_code, hook.last_status = code, "active" if 200 <= code < 300 else "failed"
            self.sent += 1

    def settled(self) -> bool:
        """Nothing waits to be sent (tests and benchmarks wait for this)."""
        with self._lock:
            return not self._due and all(d.status != "pending" for d in self.deliveries.values())

    # -- REST shapes --------------------------------------------------------------------------------------

    def hook_json(self, hook: Hook) -> JSON:
        base = hook.api_base
        where = f"/repos/{hook.repo.full_name}" if hook.repo is not None else f"/orgs/{hook.owner}"
        url = f"{base}{where}/hooks/{hook.id}"
        out: JSON = {
            "type": "Repository" if hook.repo is not None else "Organization",
            "id": hook.id,
            "name": "web",
            "active": hook.active,
            "events": list(hook.events),
            "config": {
                "url": hook.url,
                "content_type": hook.content_type,
                "insecure_ssl": "0",
                **({"secret": "********"} if hook.secret else {}),
            },
            "updated_at": gd.iso(hook.updated_at),
            "created_at": gd.iso(hook.created_at),
            "url": url,
            "ping_url": f"{url}/pings",
            "deliveries_url": f"{url}/deliveries",
        }
        if hook.repo is not None:
            out["test_url"] = f"{url}/test"
            out["last_response"] = {
                "code": hook.last_code,
                "status": hook.last_status,
                "message": None if hook.last_code is None else hook.last_status,
            }
        return out

    @staticmethod
    def delivery_json(d: Delivery, full: bool = False) -> JSON:
        out: JSON = {
            "id": d.id,
            "guid": d.guid,
            "delivered_at": gd.iso(d.delivered_at or time.time()),
            "redelivery": d.redelivery,
            "duration": d.duration,
            "status": d.status,
            "status_code": d.status_code,
            "event": d.event,
            "action": d.action,
            "installation_id": None,
            "repository_id": d.repository_id,
        }
        if full:
            out["url"] = ""
            out["request"] = {"headers": dict(d.headers), "payload": json.loads(d.body)}
            out["response"] = {"headers": dict(d.response_headers), "payload": d.response_body or None}
        return out

    # -- the REST endpoints (called with the world's lock held, after the emulator checked admin rights) --

    def create(self, owner: str, repo: Repo | None, base: str, body: Any) -> Hook:
        if not isinstance(body, dict):
            raise HookError(400, "Problems parsing JSON")
        config = body.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("url"), str):
            raise HookError(422, "Validation Failed: config.url is required")
        url = config["url"]
        if not url.startswith(("http://", "https://")) or len(url) > 2048:
            raise HookError(422, "Validation Failed: config.url is not a valid URL")
        secret = config.get("secret", "")
        events = body.get("events", ["push"])
        if (
            not isinstance(secret, str)
            or not isinstance(events, list)
            or not all(isinstance(e, str) for e in events)
        ):
            raise HookError(422, "Validation Failed: events must be a list of event names, secret a string")
        active = body.get("active", True)
        if not isinstance(active, bool):
            raise HookError(422, "Validation Failed: active must be true or false")
        same = [h for h in self.hooks.values() if h.owner.lower() == owner.lower() and h.repo == repo]
        if len(same) >= MAX_HOOKS:
            raise HookError(422, "Validation Failed: too many hooks")
        if any(h.url == url for h in same):
            raise HookError(422, "Validation Failed: Hook already exists on this repository")
        now = self.emu._world.now
        hook = Hook(
            next(self._ids),
            owner,
            repo,
            url,
            secret,
            sorted(set(events)) or ["push"],
            active,
            str(config.get("content_type") or "json"),
            base,
            now,
            now,
        )
        if not self.hooks:
            self.snapshot()  # changes count from the first hook on
        self.hooks[hook.id] = hook
        self.ping(hook)
        return hook

    def find(self, owner: str, repo: Repo | None, hook_id: int | None) -> Hook:
        hook = self.hooks.get(hook_id or 0)
        if hook is None or hook.owner.lower() != owner.lower() or hook.repo != repo:
            raise HookError(404, "Not Found")
        return hook

    def listed(self, owner: str, repo: Repo | None) -> list[Hook]:
        return [h for h in self.hooks.values() if h.owner.lower() == owner.lower() and h.repo == repo]

    def delete(self, hook: Hook) -> None:
        del self.hooks[hook.id]

    def deliveries_of(self, hook: Hook) -> list[Delivery]:
        with self._lock:
            return sorted((d for d in self.deliveries.values() if d.hook_id == hook.id), key=lambda d: -d.id)

    def delivery(self, hook: Hook, delivery_id: int | None) -> Delivery:
        with self._lock:
            d = self.deliveries.get(delivery_id or 0)
        if d is None or d.hook_id != hook.id:
            raise HookError(404, "Not Found")
        return d


def _org_simple(base: str, org: gd.User) -> JSON:
    u = f"{base}/orgs/{org.login}"
    return {
        "login": org.login,
        "id": org.id,
        "node_id": gd.node_id("Organization", org.id),
        "url": u,
        "repos_url": f"{u}/repos",
        "events_url": f"{u}/events",
        "hooks_url": f"{u}/hooks",
        "issues_url": f"{u}/issues",
        "members_url": f"{u}/members{{/member}}",
        "public_members_url": f"{u}/public_members{{/member}}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{org.id}?v=4",
        "description": None,
    }
