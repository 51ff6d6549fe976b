"""Host-side helper: pytest's rewritten-assertion bytecode for a guest's test files, compiled natively.

pytest rewrites the asserts of every test module and conftest.py it imports (parse, AST rewrite,
compile) and caches the result as ``__pycache__/<name>.<cache_tag>-pytest-<version>.pyc`` next to the
source. In a fresh CI checkout that cache is empty, so under QEMU the rewrite runs emulated on every
run. This script does the same work with the host's interpreter, using *the guest's own pytest code*
(``_pytest.assertion.rewrite`` imported from the guest's site directories), and writes the same cache
files; the guest's pytest then finds them valid (same magic number, source mtime and size) and loads
them instead of rewriting. A file is left to the guest whenever anything is unusual: rewriting raised,
or emitted a warning (the guest must show it), or pytest's internals are not what this script expects.

Started by :meth:`fleetci.multiarch.chroot.Guest.start_pytest_rewrite` as
``python -I -S -B pytest_rewrite.py REQUEST.json`` (``-I``: none of the host's site-packages or
``PYTHON*`` settings; ``-B``: nothing written into the guest's trees). Only the standard library is
imported before the guest's pytest; the request is ``{"path": [guest site dirs], "files": [[host
path, guest path], ...]}``. Prints one JSON object: ``{"tag": ..., "written": n, "skipped": n}``.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any


class _Source:
    """The file as pytest sees it in the guest (``str``: the code's filename, as in tracebacks), read
    through its host path (``os.stat``/``read_bytes``)."""

    def __init__(self, host: str, guest: str) -> None:
        self.host = host
        self.guest = guest

    def __fspath__(self) -> str:
        return self.host

    def __str__(self) -> str:
        return self.guest

    def read_bytes(self) -> bytes:
        return Path(self.host).read_bytes()


class _Config:
    """The one ini value the rewriter reads; the caller skips projects that mention it at all."""

    def getini(self, name: str) -> object:
        if name == "enable_assertion_pass_hook":
            return False
        raise KeyError(name)


class _State:
    def trace(self, message: str) -> None:
        pass


def rewrite_all(request: dict[str, Any]) -> dict[str, Any]:
    sys.path.extend(request["path"])  # after the standard library, as in the guest's own sys.path
    sys.dont_write_bytecode = True
    try:
        rewrite: Any = importlib.import_module("_pytest.assertion.rewrite")
        tail = str(rewrite.PYC_TAIL)
        rewrite_test, write_pyc, read_pyc = rewrite._rewrite_test, rewrite._write_pyc, rewrite._read_pyc
    except Exception as exc:  # no pytest in the guest, or one this helper does not know
        return {"tag": None, "written": 0, "skipped": len(request["files"]), "reason": repr(exc)[:200]}
    written = skipped = 0
    for host, guest in request["files"]:
        source = Path(host)
        pyc = source.parent / "__pycache__" / (source.name[:-3] + tail)
        try:
            if read_pyc(source, pyc) is not None:  # already valid (a kept checkout)
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                stat, code = rewrite_test(_Source(host, guest), _Config())
            if caught:
                skipped += 1
                continue
            pyc.parent.mkdir(exist_ok=True)
            if write_pyc(_State(), code, stat, pyc):
                written += 1
            else:
                skipped += 1
        except Exception:
            skipped += 1
    return {"tag": str(rewrite.PYTEST_TAG), "written": written, "skipped": skipped}


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    print(json.dumps(rewrite_all(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
