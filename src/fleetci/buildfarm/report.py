"""How ``fleetci build`` shows things to people: job tables, a master's status, progress lines, summaries.

Pure functions from the API's shapes (``models.py``) to text, so the CLI only prints what they return.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetci import gha
from fleetci.buildfarm.models import BuildInfo, JobRow, Queued, Status, Verified
from fleetci.buildfarm.recipe import Plan

JOB_HEADERS = ["job", "package", "version", "state", "worker", "attempts", "seconds", "note"]
FINISHED = ("done", "failed", "cancelled")


def job_rows(jobs: Sequence[JobRow]) -> list[list[str]]:
    return [
        [
            str(j["id"]),
            j["package"],
            f"{j['version']}-{j['release']}",
            j["state"],
            j.get("worker_id") or "-",
            str(j["attempts"]),
            "-" if j.get("duration_s") is None else f"{j['duration_s']:.2f}",
            (j.get("error") or "")[:80],
        ]
        for j in jobs
    ]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns as wide as their widest cell, two spaces apart (no trailing blanks)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines)


def jobs_table(jobs: Sequence[JobRow]) -> str:
    return table(JOB_HEADERS, job_rows(jobs))


def pending(info: BuildInfo) -> str:
    """``b (job 4) running on w-1 (attempt 2), c (job 5) ready``: a build's unfinished jobs."""
    parts = []
    for j in info["jobs"]:
        if j["state"] in FINISHED:
            continue
        where = f" on {j['worker_id']}" if j.get("worker_id") and j["state"] == "running" else ""
        tries = f" (attempt {j['attempts']})" if j.get("attempts", 0) > 1 else ""
        parts.append(f"{j['package']} (job {j['id']}) {j['state']}{where}{tries}")
    return ", ".join(parts) or "no job left"


def _counts(states: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def progress(info: BuildInfo) -> str:
    """``build 3: 2 done, 1 running``."""
    return f"build {info['build']}: {_counts([j['state'] for j in info['jobs']])}"


def queued(q: Queued) -> str:
    names = ", ".join(f"{j['package']} {j['version']}-{j['release']}" for j in q["jobs"])
    return f"build {q['build']} queued: {names}"


def build(info: BuildInfo) -> str:
    return f"build {info['build']}: {info['state']}\n{jobs_table(info['jobs'])}"


def status(data: Status) -> str:
    """Workers, job counts, the latest 30 jobs and the repository of a master."""
    workers = [[w["id"], w["name"], w["state"], str(w["jobs_done"])] for w in data["workers"]]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(data["counts"].items())) or "none"
    lines = [
        f"workers ({len(data['workers'])}, heartbeat ttl {data['heartbeat_ttl']:g}s):",
        table(["id", "name", "state", "jobs_done"], workers),
        f"jobs: {counts}",
        jobs_table(data["jobs"][:30]),
        f"repository ({len(data['repository'])} packages):",
    ]
    for name, p in sorted(data["repository"].items()):
        lines.append(f"  {name} {p['version']}-{p['release']} (built by {p['built_by']})")
    return "\n".join(lines)


def summary(build_id: int, state: str, jobs: Sequence[JobRow]) -> str:
    """The step summary of a submission (its jobs once it was waited for)."""
    return f"### fleetci build {build_id}: {state}\n\n" + gha.markdown_table(JOB_HEADERS, job_rows(jobs))


def plan(p: Plan) -> str:
    lines = [f"level {i}: {' '.join(names)}" for i, names in enumerate(p.levels)]
    for i, (names, load) in enumerate(zip(p.partitions, p.partition_cost, strict=True), 1):
        lines.append(f"partition {i} ({len(names)} packages, cost {load:g}): {' '.join(names) or '-'}")
    return "\n".join(lines)


def verified(v: Verified) -> str:
    return f"repository OK: {v['packages']} packages, {v['files']} files; index signed by {v['master_key']}"
