"""The generated parts of the docs: settings tables, action inputs, benchmark figures.

``python -m fleetci.docsgen`` rewrites, in ``README.md`` and ``docs/*.md``, every block between

* ``<!-- settings: SECTION -->`` and ``<!-- /settings -->``: the settings table of a config section (or of
  one table class, by its name), from :meth:`fleetci.config.SettingTable.markdown`;
* ``<!-- action-inputs: NAME -->`` and ``<!-- /action-inputs -->``: the inputs of ``actions/NAME/action.yml``
  (``root``: the repository's own ``action.yml``);
* ``<!-- bench: FILE[,FILE…] KEY [KEY…] -->`` and ``<!-- /bench -->``: figures read from
  ``benchmarks/results/FILE`` (a dotted KEY reaches into nested objects), one column per file.

``--check`` changes nothing and exits 1 with one line naming the stale files, so the docs cannot drift from
the settings tables, the action files or the recorded results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetci.config import SECTIONS, SettingTable
from fleetci.errors import FleetciError

# One settings module per capability; each declares its SettingTable subclasses.
SETTINGS_MODULES = (
    "fleetci.cache.settings",
    "fleetci.install.settings",
    "fleetci.multiarch.settings",
    "fleetci.registry.settings",
    "fleetci.buildfarm.settings",
    "fleetci.autoscale.settings",
)
RESULTS_DIR = Path("benchmarks") / "results"
OPENING = re.compile(r"<!-- (?P<kind>settings|action-inputs|bench): (?P<arg>[^>]*?) -->")
BLOCK = re.compile(
    r"(?P<open><!-- (?P<kind>settings|action-inputs|bench): (?P<arg>[^>]*?) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /(?P=kind) -->)",
    re.S,
)


class DocsError(FleetciError):
    """A block the generator cannot fill: an unknown section, action or result file, an unclosed block."""


@dataclass(frozen=True)
class Tables:
    """The settings tables found, and the settings modules that have none (yet)."""

    tables: tuple[type[SettingTable], ...]
    missing: tuple[str, ...] = ()


@dataclass
class Report:
    """What a run found: files whose blocks are out of date, blocks left alone for want of a table."""

    stale: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def default_root() -> Path:
    """The checkout this module lives in (``src/fleetci/docsgen.py``), else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "docs").is_dir() else Path.cwd()


def load_tables(modules: Iterable[str] = SETTINGS_MODULES) -> Tables:
    """Import each settings module and collect the SettingTable subclasses it defines."""
    tables: list[type[SettingTable]] = []
    missing: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists and one of its imports is broken: say so
                raise
            missing.append(name)
            continue
        found = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, SettingTable)
            and obj is not SettingTable
            and obj.__module__ == name
            and obj.settings
        ]
        if found:
            tables.extend(found)
        else:
            missing.append(name)
    return Tables(tuple(tables), tuple(missing))


def settings_markdown(arg: str, tables: Tables) -> str | None:
    """The table of one class (by name) or of every class of a config section; None while none exists."""
    chosen = [t for t in tables.tables if t.__name__ == arg] or [t for t in tables.tables if t.section == arg]
    if not chosen:
        if arg in SECTIONS:
            return None
        raise DocsError(
            f"unknown settings block {arg!r}: not a config section ({', '.join(SECTIONS)}) or table"
        )
    header: list[str] = []
    rows: list[str] = []
    for table in chosen:
        lines = table.markdown().splitlines()
        header = header or lines[:2]
        rows.extend(line for line in lines[2:] if line not in rows)
    return "\n".join([*header, *rows]) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def action_file(root: Path, name: str) -> Path:
    return root / "action.yml" if name == "root" else root / "actions" / name / "action.yml"


def action_inputs(root: Path, name: str) -> dict[str, dict[str, Any]]:
    """``inputs:`` of one composite action, in file order."""
    path = action_file(root, name)
    if not path.is_file():
        raise DocsError(f"unknown action {name!r}: {path.relative_to(root)} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    inputs = data.get("inputs") or {}
    return {str(k): dict(v or {}) for k, v in inputs.items()}


def inputs_markdown(root: Path, name: str) -> str:
    rows = ["| input | required | default | description |", "|---|---|---|---|"]
    for key, spec in action_inputs(root, name).items():
        required = "yes" if spec.get("required") else "no"
        if "default" not in spec:
            default = "–"
        elif spec["default"] == "":
            default = '`""`'
        else:
            default = f"`{_cell(str(spec['default']))}`"
        # Outside code spans "<runner.temp>" would be read as an HTML tag and vanish.
        description = _cell(str(spec.get("description", ""))).replace("<", "&lt;")
        rows.append(f"| `{key}` | {required} | {default} | {description} |")
    return "\n".join(rows) + "\n"


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


_MISSING = object()


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "–"
    return f"`{_cell(json.dumps(value, ensure_ascii=False))}`"


def _target(data: Any, key: str) -> str | None:
    """A file's target for KEY: ``targets.KEY`` as written, or ``targets.KEY_max[_SCOPE]`` as a bound."""
    exact = _lookup(data, f"targets.{key}")
    if exact is not _MISSING:
        return _cell(str(exact))
    targets = _lookup(data, "targets")
    for name, upper in targets.items() if isinstance(targets, dict) else ():
        if name == f"{key}_max" or name.startswith(f"{key}_max_"):  # cache: upstream_charged_max_5_runners
            scope = name[len(key) + len("_max_") :].replace("_", " ")
            return f"<= {_cell(str(upper))}" + (f" ({scope})" if scope else "")
    return None


def bench_markdown(root: Path, doc: Path, arg: str) -> str:
    """A figure-per-row table over recorded result files, with each file's target and a source line."""
    words = arg.split()
    if len(words) < 2:
        raise DocsError(f"bench block {arg!r}: expected FILE[,FILE…] KEY [KEY…]")
    names, keys = words[0].split(","), words[1:]
    results: list[Any] = []
    for name in names:
        path = root / RESULTS_DIR / name
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise DocsError(f"bench block {arg!r}: cannot read {RESULTS_DIR / name}: {exc}") from exc
    targets = [[_target(data, key) for data in results] for key in keys]
    with_target = any(t for row in targets for t in row)
    head = ["figure", *(f"`{n}`" for n in names)] + (["target"] if with_target else [])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row_targets in zip(keys, targets, strict=True):
        cells = [f"`{key}`", *(_shown(_lookup(data, key)) for data in results)]
        if with_target:
            cells.append(next((t for t in row_targets if t), "–"))
        rows.append("| " + " | ".join(cells) + " |")
    links = ", ".join(
        f"[{RESULTS_DIR / n}]({Path(os.path.relpath(root / RESULTS_DIR / n, doc.parent)).as_posix()})"
        for n in names
    )
    return "\n".join(rows) + f"\n\nSource: {links}.\n"


def render(text: str, doc: Path, root: Path, tables: Tables, report: Report | None = None) -> str:
    """TEXT with every generated block refilled; blocks of a section without a table yet stay as they are."""
    where = doc.relative_to(root) if doc.is_relative_to(root) else doc
    opened = len(OPENING.findall(text))
    blocks = list(BLOCK.finditer(text))
    if opened != len(blocks):
        raise DocsError(
            f"{where}: a generated block is not closed (<!-- /settings -->, /action-inputs, /bench)"
        )

    def fill(match: re.Match[str]) -> str:
        kind, arg = match["kind"], match["arg"].strip()
        try:
            if kind == "settings":
                body = settings_markdown(arg, tables)
                if body is None:
                    if report is not None:
                        report.skipped.append(f"{where}: settings {arg}")
                    return match.group(0)
            elif kind == "action-inputs":
                body = inputs_markdown(root, arg)
            else:
                body = bench_markdown(root, doc, arg)
        except DocsError as exc:
            raise DocsError(f"{where}: {exc}") from None
        return f"{match['open']}{body}{match['close']}"

    return BLOCK.sub(fill, text)


def doc_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def generate(root: Path | None = None, *, check: bool = False, tables: Tables | None = None) -> Report:
    """Refill every generated block (or, with ``check``, only list the files whose blocks are stale)."""
    root = default_root() if root is None else root
    tables = load_tables() if tables is None else tables
    report = Report(missing=list(tables.missing))
    for doc in doc_files(root):
        text = doc.read_text(encoding="utf-8")
        new = render(text, doc, root, tables, report)
        if new != text:
            report.stale.append(doc)
            if not check:
                doc.write_text(new, encoding="utf-8")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleetci.docsgen",
        description="Refill the generated blocks (settings, action inputs, bench) of README.md and docs/*.md",
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale")
    parser.add_argument("--root", type=Path, default=None, help="the checkout (default: this one)")
    args = parser.parse_args(argv)
    root = (args.root or default_root()).resolve()
    try:
        report = generate(root, check=args.check)
    except FleetciError as exc:
        print(f"docsgen: error: {exc}", file=sys.stderr)
        return 2
    if report.missing:
        print(f"docsgen: no SettingTable yet in {', '.join(report.missing)}", file=sys.stderr)
    for skipped in report.skipped:
        print(f"docsgen: left as it is (no table yet): {skipped}", file=sys.stderr)
    names = ", ".join(str(p.relative_to(root)) for p in report.stale)
    if args.check:
        if report.stale:
            print(f"docsgen: out of date: {names} (run python -m fleetci.docsgen)", file=sys.stderr)
            return 1
        return 0
    if report.stale:
        print(f"docsgen: rewrote {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
