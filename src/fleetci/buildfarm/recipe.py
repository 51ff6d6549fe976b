"""Recipes and the dependency graph: parsing, cycle/missing-dependency checks, levels, partitions, priorities.

A package is a directory holding ``recipe.yml``. Everything here is pure so the CLI (``fleetci build tree``),
the submitter and the master agree on one reading of a recipe.
"""

from __future__ import annotations

import io
import math
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetci.buildfarm.models import RecipeJson
from fleetci.config import number
from fleetci.errors import FleetciError, UsageError

RECIPE_FILE = "recipe.yml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,99}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$")
MAX_SOURCE_BYTES = 32 * 1024 * 1024
MAX_PARTITIONS = 10_000
parse_partitions = number(int, min=1, max=MAX_PARTITIONS)  # one list each: more is a typo
MAX_TIMEOUT_S = 30 * 86400.0  # a month: longer is a typo, and a huge value overflows the worker's timer


@dataclass(frozen=True)
class Recipe:
    """What to build: ``build`` runs with bash in a clean copy of the package directory."""

    name: str
    version: str
    build: str
    artifacts: tuple[str, ...]
    depends: tuple[str, ...] = ()
    estimate_s: float | None = None
    timeout_s: float = 3600.0
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> RecipeJson:
        return {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "artifacts": list(self.artifacts),
            "depends": list(self.depends),
            "estimate_s": self.estimate_s,
            "timeout_s": self.timeout_s,
        }


def parse_recipe(data: Any, where: str) -> Recipe:
    """Validate one recipe mapping (from YAML or from a submission); errors name the file and the key."""
    if not isinstance(data, Mapping):
        raise FleetciError(f"{where}: a recipe must be a YAML mapping")
    unknown = set(data) - {"name", "version", "build", "artifacts", "depends", "estimate_s", "timeout_s"}
    if unknown:
        raise FleetciError(f"{where}: unknown recipe key(s) {', '.join(sorted(map(str, unknown)))}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise FleetciError(f"{where}: 'name' must match {NAME_RE.pattern} (got {name!r})")
    version = data.get("version")
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise FleetciError(f"{where}: 'version' must match {VERSION_RE.pattern} (got {version!r})")
    build = data.get("build")
    if not isinstance(build, str) or not build.strip():
        raise FleetciError(f"{where}: 'build' must be a non-empty shell command")
    artifacts = data.get("artifacts")
    if isinstance(artifacts, str):
        artifacts = [artifacts]
    if not isinstance(artifacts, list) or not artifacts or not all(isinstance(a, str) for a in artifacts):
        raise FleetciError(f"{where}: 'artifacts' must be a non-empty list of glob patterns")
    for pattern in artifacts:
        if pattern.startswith("/") or ".." in Path(pattern).parts:
            raise FleetciError(f"{where}: artifact pattern {pattern!r} must stay inside the build directory")
    depends = data.get("depends") or []
    if isinstance(depends, str):
        depends = [depends]
    if not isinstance(depends, list) or not all(isinstance(d, str) and NAME_RE.fullmatch(d) for d in depends):
        raise FleetciError(f"{where}: 'depends' must be a list of package names")
    if name in depends:
        raise FleetciError(f"{where}: package {name} depends on itself")
    estimate = data.get("estimate_s")
    timeout = data.get("timeout_s", 3600)
    try:
        est = None if estimate is None else float(estimate)
        tmo = float(timeout)
    except (TypeError, ValueError):
        raise FleetciError(f"{where}: 'estimate_s' and 'timeout_s' must be numbers") from None
    if (est is not None and not 0 <= est < math.inf) or not 0 < tmo <= MAX_TIMEOUT_S:
        raise FleetciError(
            f"{where}: 'estimate_s' must be a finite number >= 0 and 'timeout_s' > 0 and <= {MAX_TIMEOUT_S:g}"
        )
    return Recipe(name, version, build, tuple(artifacts), tuple(dict.fromkeys(depends)), est, tmo)


def load_recipe(directory: Path) -> Recipe:
    """Read ``<directory>/recipe.yml``; a missing, unreadable or invalid file is a one-line error."""
    path = directory / RECIPE_FILE
    if not directory.is_dir():
        raise FleetciError(f"{directory} is not a directory")
    if not path.is_file():
        raise FleetciError(f"{directory} has no {RECIPE_FILE}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise FleetciError(f"{path} is not valid YAML: {first}") from exc
    recipe = parse_recipe(data, str(path))
    return Recipe(**{**recipe.__dict__, "path": directory})


def discover(paths: Sequence[str | Path]) -> list[Recipe]:
    """Package directories from arguments: a package directory, or a directory of package directories."""
    if not paths:
        raise UsageError("no package directories given")
    found: list[Recipe] = []
    for raw in paths:
        p = Path(raw)
        if (p / RECIPE_FILE).is_file():
            found.append(load_recipe(p))
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if (d / RECIPE_FILE).is_file())
            if not subs:
                raise FleetciError(f"{p} has no {RECIPE_FILE} and no package directories")
            found += [load_recipe(d) for d in subs]
        else:
            raise FleetciError(f"{p} does not exist")
    names: dict[str, Recipe] = {}
    for r in found:
        if r.name in names:
            raise FleetciError(f"package {r.name} is defined twice ({names[r.name].path} and {r.path})")
        names[r.name] = r
    return found


def check_graph(recipes: Iterable[Recipe], available: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    """Name -> in-set dependencies; raises on a missing dependency or a cycle (naming the cycle)."""
    by_name = {r.name: r for r in recipes}
    known = set(available)
    graph: dict[str, tuple[str, ...]] = {}
    for r in by_name.values():
        for d in r.depends:
            if d not in by_name and d not in known:
                raise FleetciError(f"package {r.name} depends on {d}, which is neither submitted nor built")
        graph[r.name] = tuple(d for d in r.depends if d in by_name)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in graph[n]:
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d) :], d]
                raise FleetciError(f"dependency cycle: {' -> '.join(cycle)}")
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return graph


def levels(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Level 0 has no in-set dependencies; level k depends on something in level k-1 (build order)."""
    depth: dict[str, int] = {}

    def d(n: str) -> int:
        if n not in depth:
            depth[n] = 1 + max((d(x) for x in graph[n]), default=-1)
        return depth[n]

    for n in graph:
        d(n)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for n in sorted(graph):
        out[depth[n]].append(n)
    return out


def priorities(graph: Mapping[str, Sequence[str]], cost: Mapping[str, float]) -> dict[str, float]:
    """Critical-path priority: a package's cost plus the longest chain of work that waits on it."""
    dependents: dict[str, list[str]] = {n: [] for n in graph}
    for n, deps in graph.items():
        for dep in deps:
            dependents[dep].append(n)
    memo: dict[str, float] = {}

    def p(n: str) -> float:
        if n not in memo:
            memo[n] = cost[n] + max((p(x) for x in dependents[n]), default=0.0)
        return memo[n]

    return {n: p(n) for n in graph}


def critical_path(graph: Mapping[str, Sequence[str]], cost: Mapping[str, float]) -> float:
    return max(priorities(graph, cost).values(), default=0.0)


@dataclass(frozen=True)
class Plan:
    """What ``fleetci build tree`` shows: build levels, balanced partitions and what they cost."""

    levels: list[list[str]]
    partitions: list[list[str]]
    partition_cost: list[float]
    critical_path: float
    total_cost: float

    def to_json(self) -> dict[str, Any]:
        return {
            "levels": self.levels,
            "partitions": self.partitions,
            "partition_cost": [round(c, 3) for c in self.partition_cost],
            "critical_path": self.critical_path,
            "total_cost": self.total_cost,
        }


def plan(recipes: Sequence[Recipe], n: int = 1) -> Plan:
    """Levels and ``n`` balanced partitions of ``recipes``; a package costs its estimate, else 1."""
    graph = check_graph(recipes)
    cost = {r.name: r.estimate_s if r.estimate_s is not None else 1.0 for r in recipes}
    parts = partitions(graph, n, cost)
    return Plan(
        levels=levels(graph),
        partitions=parts,
        partition_cost=[sum(cost[x] for x in p) for p in parts],
        critical_path=critical_path(graph, cost),
        total_cost=sum(cost.values()),
    )


def partitions(
    graph: Mapping[str, Sequence[str]], n: int, cost: Mapping[str, float] | None = None
) -> list[list[str]]:
    """N balanced groups that keep connected packages together, so each group builds on its own.

    Longest-processing-time-first over the weakly connected components: a worker given one group never
    needs another group's output.
    """
    try:
        parse_partitions(str(n))  # the CLI's rule, for callers that did not come through it
    except ValueError as exc:
        raise UsageError(f"partitions: {exc}") from None
    weight = dict(cost) if cost else dict.fromkeys(graph, 1.0)
    parent = {x: x for x in graph}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, deps in graph.items():
        for dep in deps:
            parent[find(x)] = find(dep)
    comps: dict[str, list[str]] = {}
    for x in sorted(graph):
        comps.setdefault(find(x), []).append(x)
    groups = sorted(comps.values(), key=lambda c: (-sum(weight[x] for x in c), c[0]))
    bins: list[list[str]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for comp in groups:
        i = min(range(n), key=lambda k: (loads[k], k))
        bins[i] += comp
        loads[i] += sum(weight[x] for x in comp)
    order = {name: i for i, lvl in enumerate(levels(graph)) for name in lvl}
    return [sorted(b, key=lambda x: (order[x], x)) for b in bins]


def pack_source(directory: Path) -> bytes:
    """The package directory as a gzipped tar (no VCS data), as the master stores and workers unpack it."""
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory)
            if any(part in {".git", "__pycache__"} for part in rel.parts) or path.is_symlink():
                continue
            if path.is_file():
                total += path.stat().st_size
                if total > MAX_SOURCE_BYTES:
                    raise FleetciError(f"{directory} is larger than {MAX_SOURCE_BYTES >> 20} MiB")
            tar.add(path, arcname=str(rel), recursive=False)
    return buf.getvalue()


def unpack_source(data: bytes, dest: Path) -> None:
    """Unpack a source archive with the ``data`` filter: no absolute paths, links out or device files."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FleetciError(f"source archive is unusable: {exc}") from exc
