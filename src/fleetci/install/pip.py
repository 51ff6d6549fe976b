"""pip installs that retry transient index failures and explain permanent ones in one line.

fleetci owns the retry policy: pip runs with ``--retries 0`` so every network fault surfaces as a failed
attempt we can classify (pip's own console output says "No matching distribution" for a 503 and a 404
alike; its ``--log`` file says which). When a bulk install fails, each requirement is installed on its
own so the report names exactly which ones failed and why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from fleetci import retry
from fleetci.errors import UsageError
from fleetci.install.models import CheckEntry, PackageEntry, VerifyEntry
from fleetci.install.retry import PermanentFailure, TransientFailure, first_match, policy
from fleetci.install.settings import InstallSettings

Progress = Callable[[str], None]

_I = re.IGNORECASE
# Checked first: any sign of a network fault makes the attempt transient, even when pip's last line is
# "No matching distribution" (that is what an index answering 503 looks like on pip's console).
TRANSIENT: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"too many (\d{3}) error responses"), r"HTTP \1"),
    (re.compile(r"\b(5\d\d) Server Error"), r"HTTP \1"),
    (re.compile(r"\b(429) Client Error"), r"HTTP \1 (rate limited)"),
    (re.compile(r"HTTP error (5\d\d|429)"), r"HTTP \1"),
    (re.compile(r"Connection reset by peer|ConnectionResetError", _I), "connection reset"),
    (re.compile(r"Connection refused|ConnectionRefusedError", _I), "connection refused"),
    (re.compile(r"RemoteDisconnected|Connection aborted", _I), "connection aborted"),
    (
        re.compile(r"IncompleteRead|Connection broken|ChunkedEncodingError|ContentDecodingError"),
        "truncated download",
    ),
    (re.compile(r"BadZipFile|File is not a zip file"), "truncated download (bad zip)"),
    (re.compile(r"Read timed out|ReadTimeoutError|ConnectTimeoutError|timed out", _I), "timeout"),
    (re.compile(r"Temporary failure in name resolution|Name or service not known", _I), "DNS failure"),
    (re.compile(r"NewConnectionError|connection error", _I), "connection error"),
]
PERMANENT: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"No matching distribution found for (\S+)"), r"no matching distribution for \1"),
    (
        re.compile(r"Cannot install (.+?) because these package versions have conflicting dependencies"),
        r"resolver conflict between \1",
    ),
    (re.compile(r"ResolutionImpossible"), "resolver conflict (ResolutionImpossible)"),
    (re.compile(r"Invalid requirement: (.+)"), r"invalid requirement \1"),
    (
        re.compile(r"externally-managed-environment"),
        "the target Python is externally managed (PEP 668): use a venv",
    ),
    (re.compile(r"Could not open requirements file: (.+)"), r"cannot read requirements file: \1"),
    (re.compile(r"does not appear to be a Python project: (.+)"), r"not a Python project: \1"),
    (re.compile(r"(Failed building wheel for \S+|subprocess-exited-with-error)"), r"build failed (\1)"),
    (re.compile(r"THESE PACKAGES DO NOT MATCH THE HASHES"), "hash mismatch against the requirements"),
]


def classify(output: str) -> TransientFailure | PermanentFailure:
    """Decide retry vs fail-fast from pip's console output plus its debug log."""
    transient = first_match(output, TRANSIENT)
    if transient:
        return TransientFailure(transient)
    permanent = first_match(output, PERMANENT)
    if permanent:
        return PermanentFailure(permanent)
    errors = [ln.strip() for ln in output.splitlines() if "ERROR:" in ln]
    tail = errors[-1].split("ERROR:", 1)[1].strip() if errors else "pip failed"
    return PermanentFailure(tail[:300])


@dataclass(frozen=True)
class Item:
    """One requested requirement (a flag, a line of a requirements file, or the project)."""

    spec: str
    name: str
    editable: bool = False

    @property
    def argv(self) -> list[str]:
        return ["-e", self.spec] if self.editable else [self.spec]


@dataclass
class PackageResult:
    name: str
    requested: str
    installed: str | None = None
    attempts: int = 0
    retries: int = 0
    duration_s: float = 0.0
    phase: str = "bulk"
    ok: bool = False
    error: str | None = None
    kind: str = "pip"

    def as_dict(self) -> PackageEntry:
        return PackageEntry(
            name=self.name,
            requested=self.requested,
            installed=self.installed,
            attempts=self.attempts,
            retries=self.retries,
            duration_s=self.duration_s,
            phase=self.phase,
            ok=self.ok,
            error=self.error,
            kind=self.kind,
        )


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)  # index options found in requirement files


def parse_item(spec: str, where: str, editable: bool = False) -> Item:
    """Validate one requirement before pip runs: bad syntax is a usage error, not a retry."""
    text = spec.strip()
    if text.startswith("-"):  # pip would read it as an option (--index-url=…, --pre, -r …)
        raise UsageError(
            f"{where}: {text!r} is a pip option, not a requirement (write a path as ./{text})"
            if editable
            else f"{where}: {text!r} is a pip option, not a requirement"
        )
    if (
        editable
        or text.startswith((".", "/", "~"))
        or "://" in text.split("@", 1)[0]
        or text.endswith(".whl")
    ):
        base = text.split("[", 1)[0]
        if editable and "://" not in base and not Path(base).expanduser().exists():
            raise UsageError(f"{where}: project directory {base!r} does not exist")
        local = "://" not in base
        name = Path(base).expanduser().resolve().name if local else Path(base.rstrip("/")).name or base
        return Item(text, canonicalize_name(name) if name else text, editable)
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise UsageError(f"{where}: invalid requirement {text!r}: {str(exc).splitlines()[0]}") from None
    return Item(text, canonicalize_name(req.name))


INDEX_OPTIONS = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--pre", "--no-index")


def read_requirements(path: str, plan: Plan, seen: set[Path]) -> None:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UsageError(f"cannot read requirements file {path}: {reason}") from exc
    if p.resolve() in seen:
        return
    seen.add(p.resolve())
    joined = re.sub(r"\\\n", "", text)
    for n, raw in enumerate(joined.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        where = f"{path}:{n}"
        opt, _, rest = line.partition(" ")
        rest = rest.strip()
        if opt in ("-r", "--requirement"):
            read_requirements(str(p.parent / rest), plan, seen)
        elif opt in ("-c", "--constraint"):
            plan.constraints.append(str(p.parent / rest))
        elif opt in ("-e", "--editable"):
            target = rest if "://" in rest or Path(rest).is_absolute() else str(p.parent / rest)
            plan.items.append(parse_item(target, where, editable=True))
        elif opt in INDEX_OPTIONS or opt.split("=", 1)[0] in INDEX_OPTIONS:
            plan.options += line.split(None, 1)
        elif line.startswith("-"):
            raise UsageError(f"{where}: unsupported option {opt!r} in a requirements file")
        else:
            plan.items.append(parse_item(line, where))


# What makes a directory a Python project pip can build; without one, its requirements*.txt are installed.
PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")
# Top-level directories of a flat layout that are not the project's importable packages.
NOT_PACKAGES = frozenset(
    {"test", "tests", "testing", "doc", "docs", "example", "examples", "script", "scripts", "benchmark",
     "benchmarks", "build", "dist", "tools", "site-packages", "node_modules"}
)  # fmt: skip


def local_project(settings: InstallSettings) -> Path | None:
    """The project directory when ``--project`` names a local path (not a VCS or archive URL)."""
    if not settings.project or "://" in settings.project or settings.project.startswith("-"):
        return None  # a URL is pip's to fetch; a leading '-' is refused by parse_item
    return Path(settings.project).expanduser()


def project_requirements(directory: Path) -> list[Path] | None:
    """None for a buildable project; else its requirements*.txt (a usage error when there are none)."""
    if not directory.is_dir():
        state = "is not a directory" if directory.exists() else "does not exist"
        raise UsageError(f"project directory {str(directory)!r} {state}")
    if any((directory / name).is_file() for name in PROJECT_FILES):
        return None
    found = sorted(directory.glob("requirements*.txt"), key=lambda p: (p.name != "requirements.txt", p.name))
    if not found:
        raise UsageError(
            f"{directory} holds no Python project (no {', '.join(PROJECT_FILES)} or requirements*.txt)"
        )
    return found


def project_modules(directory: Path) -> tuple[str, ...]:
    """The project's top-level packages, when its layout shows them (``src/<pkg>/`` or ``<pkg>/``)."""
    if not any((directory / name).is_file() for name in PROJECT_FILES):
        return ()
    for root in (directory / "src", directory):
        names = sorted(
            init.parent.name
            for init in root.glob("*/__init__.py")
            if init.parent.name.isidentifier() and init.parent.name not in NOT_PACKAGES
        )
        if names:
            return tuple(names)
    return ()


def build_plan(settings: InstallSettings) -> Plan:
    plan = Plan()
    seen: set[Path] = set()
    project = local_project(settings)
    for spec in settings.pip_specs:
        is_project = bool(settings.project) and spec.split("[", 1)[0] == settings.project
        if is_project and project is not None:
            files = project_requirements(project)
            if files is not None:  # a plain repository with requirements files only
                if settings.extras:
                    raise UsageError(f"extras need a pyproject.toml, setup.py or setup.cfg in {project}")
                for f in files:
                    read_requirements(str(f), plan, seen)
                continue
        plan.items.append(parse_item(spec, "requested", editable=is_project))
    for req in settings.requirements:
        read_requirements(req, plan, seen)
    for c in settings.constraints:
        if not Path(c).expanduser().is_file():
            raise UsageError(f"cannot read constraints file {c}: no such file")
        plan.constraints.append(c)
    # the same requirement twice would make pip fail with "Double requirement"
    unique = {item.spec: item for item in plan.items}
    plan.items = list(unique.values())
    return plan


def pip_env() -> dict[str, str]:
    """pip inherits PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, proxies and certificates; never prompts."""
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env["PIP_NO_INPUT"] = "1"
    env.pop("PIP_RETRIES", None)
    return env


def pip_argv(settings: InstallSettings, plan: Plan, items: list[Item], log: Path, report: Path) -> list[str]:
    argv = [
        settings.python,
        "-m",
        "pip",
        "install",
        "--retries",
        "0",
        "--timeout",
        f"{settings.pip_timeout:g}",
    ]
    argv += ["--log", str(log), "--report", str(report)]
    if settings.index_url:
        argv += ["--index-url", settings.index_url]
    for url in settings.extra_index_urls:
        argv += ["--extra-index-url", url]
    argv += plan.options
    for c in plan.constraints:
        argv.append(f"--constraint={c}")  # one argument: a path starting with '-' stays a path
    for item in items:
        argv += item.argv
    return argv


def _report_entries(report: Path) -> list[dict[str, Any]]:
    """The ``install`` entries of pip's ``--report`` JSON (none when it is missing or unreadable)."""
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    entries = data.get("install", []) if isinstance(data, dict) else []
    return [e for e in entries if isinstance(e, dict)]


def _reported_versions(report: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in _report_entries(report):
        meta = entry.get("metadata") or {}
        if meta.get("name") and meta.get("version"):
            out[canonicalize_name(meta["name"])] = str(meta["version"])
            url = str((entry.get("download_info") or {}).get("url", ""))
            if url.startswith("file://"):
                out[canonicalize_name(Path(url[7:].rstrip("/")).name)] = str(meta["version"])
    return out


def _reported_names(report: Path) -> dict[str, str]:
    """Local directories pip installed (named like the directory) -> the project's own name."""
    out: dict[str, str] = {}
    for entry in _report_entries(report):
        name = (entry.get("metadata") or {}).get("name")
        url = str((entry.get("download_info") or {}).get("url", ""))
        if name and url.startswith("file://"):
            out[canonicalize_name(Path(url[7:].rstrip("/")).name)] = canonicalize_name(str(name))
    return out


_VERSIONS = (
    "import importlib.metadata as m, json, sys\n"
    "out = {}\n"
    "for n in sys.argv[1:]:\n"
    "    try: out[n] = m.version(n)\n"
    "    except Exception: pass\n"
    "print(json.dumps(out))\n"
)


def installed_versions(python: str, names: list[str]) -> dict[str, str]:
    """Versions in the target environment (for requirements pip found already satisfied)."""
    if not names:
        return {}
    proc = subprocess.run([python, "-c", _VERSIONS, *names], capture_output=True, text=True, timeout=60)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return {}
    return {canonicalize_name(k): str(v) for k, v in data.items()}


@dataclass
class Attempts:
    count: int = 0
    retries: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # a local directory's name -> its project's


def install_items(
    settings: InstallSettings, plan: Plan, items: list[Item], label: str, progress: Progress
) -> Attempts:
    """Run pip for ``items`` with the retry policy; raise Transient/PermanentFailure when it gives up."""
    state = Attempts()

    def attempt(n: int) -> None:
        state.count = n
        with tempfile.TemporaryDirectory(prefix="fleetci-pip-") as tmp:
            log, report = Path(tmp) / "pip.log", Path(tmp) / "report.json"
            argv = pip_argv(settings, plan, items, log, report)
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, env=pip_env(), timeout=3600)
            except FileNotFoundError:
                raise PermanentFailure(f"Python interpreter {settings.python!r} not found") from None
            except subprocess.TimeoutExpired:
                raise TransientFailure("pip did not finish within 3600s") from None
            if proc.returncode == 0:
                state.versions = _reported_versions(report)
                state.names = _reported_names(report)
                return
            debug = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            failure = classify(proc.stdout + proc.stderr + debug)
            if isinstance(failure, PermanentFailure) and "No module named pip" in proc.stderr:
                failure = PermanentFailure(f"{settings.python} has no pip module")
            progress(f"pip {label}: attempt {n} failed: {failure}")
            raise failure

    def on_retry(n: int, sleep: float, exc: BaseException) -> None:
        state.retries += 1
        progress(f"pip {label}: transient failure ({exc}); retry {n}/{settings.retries} in {sleep:.1f}s")

    try:
        retry.call(attempt, policy(settings), retry_on=TransientFailure, on_retry=on_retry)
    except (TransientFailure, PermanentFailure) as exc:
        exc.attempts = state
        raise
    return state


def install(settings: InstallSettings, plan: Plan, progress: Progress) -> list[PackageResult]:
    """Bulk install; on failure, one by one. Returns one result per requested item."""
    if not plan.items:
        return []
    results = {i.spec: PackageResult(i.name, i.spec) for i in plan.items}
    start = time.monotonic()
    try:
        state = install_items(settings, plan, plan.items, "bulk install", progress)
    except (TransientFailure, PermanentFailure) as exc:
        elapsed = time.monotonic() - start
        count = _attempts_from(exc)
        for r in results.values():
            r.attempts, r.retries, r.duration_s = count.count, count.retries, round(elapsed, 3)
            r.error = str(exc)
        if len(plan.items) == 1:
            only = results[plan.items[0].spec]
            only.phase = "bulk"
            return [only]
        progress(f"bulk install failed ({exc}); installing {len(plan.items)} requirements one by one")
        for item in plan.items:
            r = results[item.spec]
            r.phase, r.error = "individual", None
            t0 = time.monotonic()
            try:
                single = install_items(settings, plan, [item], item.spec, progress)
            except (TransientFailure, PermanentFailure) as one:
                c = _attempts_from(one)
                r.attempts += c.count
                r.retries += c.retries
                r.error = str(one)
            else:
                r.attempts += single.count
                r.retries += single.retries
                r.ok = True
                r.installed = single.versions.get(item.name)
                r.name = single.names.get(item.name, r.name)
            r.duration_s = round(r.duration_s + time.monotonic() - t0, 3)
    else:
        elapsed = round(time.monotonic() - start, 3)
        for item in plan.items:
            r = results[item.spec]
            r.ok, r.attempts, r.retries, r.duration_s = True, state.count, state.retries, elapsed
            r.installed = state.versions.get(item.name)
            r.name = state.names.get(item.name, r.name)
    missing = [r.name for r in results.values() if r.ok and r.installed is None]
    if missing:
        found = installed_versions(settings.python, missing)
        for r in results.values():
            if r.ok and r.installed is None:
                r.installed = found.get(r.name)
    return list(results.values())


def _attempts_from(exc: BaseException) -> Attempts:
    """The attempt counters install_items attached to the failure it raised."""
    state = getattr(exc, "attempts", None)
    return state if isinstance(state, Attempts) else Attempts(1, 0)


@dataclass
class Verified:
    module: str
    ok: bool
    distribution: str | None = None
    version: str | None = None
    error: str | None = None

    def as_dict(self) -> VerifyEntry:
        return VerifyEntry(
            module=self.module,
            ok=self.ok,
            distribution=self.distribution,
            version=self.version,
            error=self.error,
        )


_VERIFY = """
import importlib, importlib.metadata as md, json, sys
name = sys.argv[1]
out = {"module": name}
try:
    mod = importlib.import_module(name)
except BaseException as exc:
    out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    print(json.dumps(out)); sys.exit(0)
dists = []
try:
    dists = md.packages_distributions().get(name.split(".")[0], [])
except Exception:
    pass
for d in dists:
    try:
        out["distribution"], out["version"] = d, md.version(d)
        break
    except Exception:
        pass
if "version" not in out and getattr(mod, "__version__", None):
    out["version"] = str(mod.__version__)
print(json.dumps(out))
"""


def verify(python: str, modules: tuple[str, ...], progress: Progress) -> list[Verified]:
    """Import each module in a fresh interpreter (no state leaks between them) and read its version."""
    results = []
    for module in modules:
        try:
            proc = subprocess.run(
                [python, "-c", _VERIFY, module], capture_output=True, text=True, timeout=300
            )
            data = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            data = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        if not data:
            tail = (proc.stderr.strip().splitlines() or ["interpreter crashed"])[-1]
            data = {"error": tail[:300]}
        v = Verified(
            module, "error" not in data, data.get("distribution"), data.get("version"), data.get("error")
        )
        progress(
            f"verify {module}: " + (f"ok {v.version or '(no version)'}" if v.ok else f"FAILED {v.error}")
        )
        results.append(v)
    return results


def pip_check(python: str, progress: Progress) -> CheckEntry:
    """``pip check`` in the target environment: every installed distribution's requirements satisfied."""
    try:
        proc = subprocess.run(
            [python, "-m", "pip", "check"], capture_output=True, text=True, env=pip_env(), timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        entry = CheckEntry(ok=False, problems=[f"pip check did not run: {type(exc).__name__}: {exc}"])
    else:
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode == 0:
            entry = CheckEntry(ok=True, problems=[])
        elif "No module named pip" in proc.stderr:
            entry = CheckEntry(ok=False, problems=[f"{python} has no pip module"])
        else:
            tail = proc.stderr.strip().splitlines()[-1:] or ["pip check failed"]
            entry = CheckEntry(ok=False, problems=lines or tail)
    progress("pip check: " + ("no broken requirements" if entry["ok"] else "; ".join(entry["problems"])))
    return entry
