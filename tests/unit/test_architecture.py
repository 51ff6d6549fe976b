"""The package's shape, checked statically (no imports, well under a second), and one runtime check.

- Imports point one way: no cycle between the parts of ``fleetci`` (a subpackage, or a top-level module),
  nor between the modules of one package. Every ``import``/``from`` statement counts, also those inside
  functions and under ``TYPE_CHECKING``: a deferred import is still a dependency.
- The capabilities stand on the shared plumbing only: none imports the emulators (``testing``), the
  benchmarks (``bench``) or the command line (``cli``).
- One of each piece of plumbing: httpx clients are built in ``http.py``, tenacity is used in
  ``retry.py``, files are renamed into place in ``files.py``, and deadline loops live in ``wait.py``.

- At run time (one subprocess): serving, also on a shared store, loads no heavy optional module.

A failure lists each offending import or call as ``path:line``.
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tokenize
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


PACKAGE = SRC / "fleetci"


CAPABILITIES = ("cache", "p2p", "install", "multiarch", "registry", "buildfarm", "autoscale")


ABOVE_CAPABILITIES = ("fleetci.testing", "fleetci.bench", "fleetci.cli")


@dataclass(frozen=True)
class Source:
    path: Path
    module: str  # dotted name: fleetci.cache.engine, fleetci.cache (its __init__)
    text: str
    tree: ast.Module

    @property
    def where(self) -> str:
        return str(self.path.relative_to(SRC.parent))


@dataclass(frozen=True)
class Import:
    source: Source
    target: str  # the fleetci module imported (a package's __init__ is the package's name)
    line: int

    def __str__(self) -> str:
        return f"{self.source.where}:{self.line} imports {self.target}"


@cache
def sources() -> tuple[Source, ...]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        text = path.read_text(encoding="utf-8")
        found.append(Source(path, module, text, ast.parse(text, filename=str(path))))
    return tuple(found)


@cache
def module_names() -> frozenset[str]:
    return frozenset(s.module for s in sources())


def _is_package(source: Source) -> bool:
    return source.path.name == "__init__.py"


def _absolute(source: Source, node: ast.ImportFrom) -> str:
    """The module a ``from … import`` names, relative imports resolved against ``source``."""
    if node.level == 0:
        return node.module or ""
    base = source.module.split(".")
    if not _is_package(source):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(source: Source) -> Iterator[Import]:
    """The fleetci modules ``source`` imports, at any depth of its code."""
    known = module_names()
    for node in ast.walk(source.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fleetci" and alias.name in known:
                    yield Import(source, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(source, node)
            if module.split(".")[0] != "fleetci":
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in known:  # ``from fleetci.cache import store``: the submodule
                    yield Import(source, sub, node.lineno)
                elif module in known:  # ``from fleetci.cache.store import Store``: the module
                    yield Import(source, module, node.lineno)


def part(module: str) -> str:
    """The part of fleetci a module belongs to: its subpackage, or itself for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(edges: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    nodes = set(edges) | {w for targets in edges.values() for w in targets}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(found)


def describe_cycles(edges: dict[str, dict[str, list[Import]]]) -> list[str]:
    """Each cycle with the imports that close it (one example per edge inside the cycle)."""
    shown = []
    for component in cycles(edges):
        inside = set(component)
        why = [
            f"  {a} -> {b}: {edges[a][b][0]}"
            for a in component
            for b in sorted(edges.get(a, {}))
            if b in inside
        ]
        shown.append(" <-> ".join(component) + "\n" + "\n".join(why))
    return shown


def test_no_import_cycle_between_the_parts_of_fleetci() -> None:
    edges: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for source in sources():
        for imp in imports(source):
            a, b = part(source.module), part(imp.target)
            if a != b:
                edges[a][b].append(imp)
    found = describe_cycles(edges)
    assert not found, "import cycles between parts of fleetci:\n" + "\n".join(found)


def test_no_import_cycle_between_the_modules_of_a_package() -> None:
    edges: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for source in sources():
        for imp in imports(source):
            if imp.target != source.module:
                edges[source.module][imp.target].append(imp)
    found = describe_cycles(edges)
    assert not found, "import cycles between modules:\n" + "\n".join(found)


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_capabilities_do_not_import_the_emulators_benchmarks_or_cli(capability: str) -> None:
    assert (PACKAGE / capability / "__init__.py").is_file(), f"no package fleetci.{capability}"
    wrong = [
        str(imp)
        for source in sources()
        if part(source.module) == capability
        for imp in imports(source)
        if any(imp.target == top or imp.target.startswith(top + ".") for top in ABOVE_CAPABILITIES)
    ]
    assert not wrong, f"fleetci.{capability} imports what stands above it:\n" + "\n".join(wrong)


def qualified_calls(source: Source) -> Iterator[tuple[str, int]]:
    """``(dotted name, line)`` of every call whose callee resolves through this file's imports:
    ``httpx.Client(…)``, ``import httpx as h; h.Client(…)`` and ``from httpx import Client; Client(…)``
    all give ``httpx.Client``."""
    names: dict[str, str] = {}
    for node in ast.walk(source.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(source.tree):
        if not isinstance(node, ast.Call):
            continue
        attrs: list[str] = []
        func = node.func
        while isinstance(func, ast.Attribute):
            attrs.append(func.attr)
            func = func.value
        if isinstance(func, ast.Name) and func.id in names:
            yield ".".join([names[func.id], *reversed(attrs)]), node.lineno


def code_only(text: str) -> str:
    """``text`` with its comments and string literals blanked (same lines): a docstring that names a
    call is not the call."""
    lines = text.splitlines(keepends=True)
    out = [list(line) for line in lines]
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            continue
        (r0, c0), (r1, c1) = tok.start, tok.end
        for r in range(r0, r1 + 1):
            row = out[r - 1]
            start = c0 if r == r0 else 0
            end = c1 if r == r1 else len(row)
            for c in range(start, end):
                if row[c] != "\n":
                    row[c] = " "
    return "".join("".join(row) for row in out)


def only_in(allowed: str, found: list[tuple[Source, int]]) -> list[str]:
    return [
        f"{s.where}:{line}"
        for s, line in sorted(found, key=lambda f: (f[0].where, f[1]))
        if s.where != allowed
    ]


@pytest.mark.parametrize("call", ["httpx.Client", "httpx.AsyncClient"])
def test_httpx_clients_are_built_only_in_http_py(call: str) -> None:
    found = [(s, line) for s in sources() for name, line in qualified_calls(s) if name == call]
    assert any(s.where == "src/fleetci/http.py" for s, _ in found), f"http.py no longer builds {call}"
    wrong = only_in("src/fleetci/http.py", found)
    assert not wrong, f"{call}(…) outside fleetci.http (use http.client / http.async_client / JsonApi):\n" + (
        "\n".join(wrong)
    )


def test_tenacity_is_imported_only_in_retry_py() -> None:
    found = []
    for s in sources():
        for node in ast.walk(s.tree):
            if isinstance(node, ast.Import):
                hits = [a.name for a in node.names if a.name.split(".")[0] == "tenacity"]
            elif isinstance(node, ast.ImportFrom):
                hits = [node.module] if (node.module or "").split(".")[0] == "tenacity" else []
            else:
                continue
            if hits:
                found.append((s, node.lineno))
    assert any(s.where == "src/fleetci/retry.py" for s, _ in found), "retry.py no longer uses tenacity"
    wrong = only_in("src/fleetci/retry.py", found)
    assert not wrong, "tenacity outside fleetci.retry (use retry.call / call_async):\n" + "\n".join(wrong)


def test_os_replace_is_called_only_in_files_py() -> None:
    found = [(s, line) for s in sources() for name, line in qualified_calls(s) if name == "os.replace"]
    assert any(s.where == "src/fleetci/files.py" for s, _ in found), "files.py no longer calls os.replace"
    wrong = only_in("src/fleetci/files.py", found)
    assert not wrong, "os.replace(…) outside fleetci.files (use files.write_atomic / write_json):\n" + (
        "\n".join(wrong)
    )


def renames(source: Source) -> Iterator[int]:
    """Lines that rename a file by hand: ``os.rename``/``os.replace`` and ``Path.rename(x)``/
    ``Path.replace(x)`` (one positional argument and no keywords, unlike ``str.replace(a, b)`` or
    ``dataclasses.replace(obj, **changes)``)."""
    for name, line in qualified_calls(source):
        if name in ("os.rename", "os.replace"):
            yield line
    for node in ast.walk(source.tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("rename", "replace")
            and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "os")
            and len(node.args) == 1
            and not node.keywords
        ):
            yield node.lineno


def test_files_are_renamed_into_place_only_in_files_py() -> None:
    found = [(s, line) for s in sources() for line in renames(s)]
    assert any(s.where == "src/fleetci/files.py" for s, _ in found), "files.py no longer renames"
    wrong = only_in("src/fleetci/files.py", found)
    assert not wrong, (
        "hand-written rename into place (use files.partial / move_into_place / move_aside / write_atomic):\n"
        + "\n".join(wrong)
    )


def test_renames_finds_path_and_os_renames_but_not_string_replace() -> None:
    s = _source(
        "fleetci.cache.store",
        "import os\nimport dataclasses\nfrom pathlib import Path\n"
        "def f(p: Path, q: Path, x: object) -> None:\n"
        "    p.replace(q)\n"
        "    os.rename(p, q)\n"
        "    q.with_name('a').rename(p)\n"
        "    'abc'.replace('a', 'b')\n"
        "    dataclasses.replace(x, a=1)\n",
    )
    assert sorted(renames(s)) == [5, 6, 7]


HTTPX_SHORTCUTS = {
    f"httpx.{verb}" for verb in ("get", "post", "put", "patch", "delete", "head", "request", "stream")
}


def test_no_module_level_httpx_requests() -> None:
    """``httpx.get(…)`` builds a client of its own per call: outside the one constructor in fleetci.http."""
    found = [
        f"{s.where}:{line}" for s in sources() for name, line in qualified_calls(s) if name in HTTPX_SHORTCUTS
    ]
    assert not found, "httpx.get/post/… (use fleetci.http.client or JsonApi):\n" + "\n".join(found)


DEADLINE = re.compile(r"\bdeadline\s*=\s*time\.monotonic\(\)")


def test_deadline_loops_live_only_in_wait_py() -> None:
    found = [
        (s, text.count("\n", 0, m.start()) + 1)
        for s in sources()
        for text in [code_only(s.text)]
        for m in DEADLINE.finditer(text)
    ]
    assert any(s.where == "src/fleetci/wait.py" for s, _ in found), "wait.py no longer holds the loop"
    wrong = only_in("src/fleetci/wait.py", found)
    assert not wrong, "hand-written deadline loops (use wait.wait_until / wait_until_async):\n" + "\n".join(
        wrong
    )


def _source(module: str, text: str) -> Source:
    path = SRC / (module.replace(".", "/") + ".py")
    return Source(path, module, text, ast.parse(text))


def test_the_checks_see_deferred_aliased_and_relative_imports() -> None:
    s = _source(
        "fleetci.cache.engine",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from fleetci.p2p.messages import Message\n"
        "def f():\n    import fleetci.testing.github\n"
        "    from . import store\n    from ..bench import cache\n",
    )
    assert sorted((i.line, i.target) for i in imports(s)) == [
        (3, "fleetci.p2p.messages"),
        (5, "fleetci.testing.github"),
        (6, "fleetci.cache.store"),
        (7, "fleetci.bench.cache"),
    ]
    calls = _source(
        "fleetci.x",
        "import httpx as h\nfrom os import replace as mv\nfrom httpx import AsyncClient\n"
        "def f():\n    h.Client(); mv('a', 'b'); AsyncClient(); h.get('x')\n",
    )
    assert sorted(n for n, _ in qualified_calls(calls)) == [
        "httpx.AsyncClient",
        "httpx.Client",
        "httpx.get",
        "os.replace",
    ]
    text = code_only('"""deadline = time.monotonic() + 1"""\nx = 1  # deadline = time.monotonic()\n')
    assert not DEADLINE.search(text) and text.count("\n") == 2
    assert DEADLINE.search(code_only("def f():\n    deadline = time.monotonic() + 5\n"))


def test_cycles_finds_each_loop_once() -> None:
    def edges(*pairs: str) -> dict[str, dict[str, list[Import]]]:
        out: dict[str, dict[str, list[Import]]] = defaultdict(dict)
        for pair in pairs:
            a, b = pair.split(">")
            out[a][b] = []
        return out

    assert cycles(edges("a>b", "b>c")) == []
    assert cycles(edges("a>b", "b>a", "b>c", "c>d", "d>c", "x>y")) == [["a", "b"], ["c", "d"]]
    assert cycles(edges("a>b", "b>c", "c>a")) == [["a", "b", "c"]]


# What ``fleetci cache serve`` loads before it answers: a module named here costs every proxy RSS (issue
# 16: a proxy on a shared store within 50 MB) and is imported where it is first used.
SERVE_IMPORTS = """
import sys
from fleetci.cli import build_parser, prepare_process
prepare_process("cache")  # first, as fleetci.cli.main does
build_parser("cache")
from fleetci.cache.server import run  # what cmd_serve imports
from fleetci.cache.settings import cache_settings
from fleetci.p2p.backend import shared_store
env = {"CACHE_BACKEND": "redis://127.0.0.1:9/0", "FLEETCI_CACHE_SECRET": "s" * 32}
shared_store(cache_settings({"upstream": "http://127.0.0.1:9"}, {}, env))  # the store, not connected
print(" ".join(sorted(sys.modules)))
"""
NOT_FOR_SERVING = {
    "graphql": "graphql-core: only once a GraphQL query is cached",
    "prometheus_client": "only on the first /metrics scrape",
    "libp2p": "only with --enable-p2p",
    "trio": "only with --enable-p2p",
    "httpx": "the proxy talks HTTP through aiohttp",
    "redis": "the shared store talks through valkey-py (redis-py 8 weighs ~3 MB more)",
    "frozenlist._frozenlist": "its C++ extension loads libstdc++ (~0.9 MB): the pure-Python twin serves",
    "cryptography.hazmat.bindings._rust": "a shared store seals with pycryptodome (FleetKeys lean)",
    "pycparser": "pycryptodome is bound through ctypes, not cffi (which parses C headers at import)",
    "fleetci.p2p.discovery": "peer discovery: only with --enable-p2p",
    "fleetci.p2p.messages": "the gossip codec: only with --enable-p2p",
    "fleetci.bench": "benchmarks",
    "fleetci.testing": "emulators",
}


def test_serving_with_a_shared_store_loads_no_heavy_optional_module(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SERVE_IMPORTS],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith(("CACHE_", "FLEETCI_", "FROZENLIST_"))},
    ).stdout.split()
    loaded = {m for m in NOT_FOR_SERVING if m in out or any(o.startswith(m + ".") for o in out)}
    assert not loaded, {m: NOT_FOR_SERVING[m] for m in loaded}
    assert "valkey" in out and "Crypto.Cipher.AES" in out  # the shared store's own needs did load
