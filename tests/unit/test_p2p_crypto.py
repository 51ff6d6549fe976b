"""The lean key backend (review t2 #8): pycryptodome on its ctypes binding, without touching other threads.

Each check runs in a fresh interpreter: whether pycryptodome binds through cffi is decided once per
process, at the first import of ``Crypto.Util._raw_api``.
"""

from __future__ import annotations

import json
import subprocess
import sys

LEAN_BACKEND = """
import json, sys
from fleetci.p2p.crypto import FleetKeys
keys = FleetKeys("s3cret", lean=True)
assert keys.open("s", keys.seal("s", b"body", b"aad"), b"aad") == b"body"
import Crypto.Util._raw_api as raw
print(json.dumps({"backend": raw.backend, "cffi_loaded": "cffi" in sys.modules}))
"""

# A thread imports cffi while the lean keys are loading pycryptodome: the load is held in the middle (while
# a module it imports runs, not in a finder: finders run under the global import lock, which would hold
# the other thread's import too) until that thread's import of cffi is over.
OTHER_THREAD = """
import importlib.machinery, json, sys, threading
from fleetci.p2p.crypto import FleetKeys

inside, other_done, result = threading.Event(), threading.Event(), {}

class HeldLoader:
    def __init__(self, real):
        self.real = real
    def create_module(self, spec):
        return self.real.create_module(spec)
    def exec_module(self, module):
        inside.set()
        result["held"] = other_done.wait(30)  # the other import ran inside the load
        self.real.exec_module(module)

class Hold:
    def find_spec(self, name, path=None, target=None):
        if name != "Crypto.Util._file_system" or inside.is_set():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        spec.loader = HeldLoader(spec.loader)
        return spec

def other():
    inside.wait(30)
    try:
        import cffi
        result["other"] = "imported " + cffi.__name__
    except ImportError as exc:
        result["other"] = f"ImportError: {exc}"
    other_done.set()

sys.meta_path.insert(0, Hold())
thread = threading.Thread(target=other)
thread.start()
keys = FleetKeys("s3cret", lean=True)
thread.join(30)
result["sealed"] = keys.open("s", keys.seal("s", b"body", b"aad"), b"aad") == b"body"
print(json.dumps(result))
"""


def run_python(code: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_lean_keys_bind_pycryptodome_through_ctypes() -> None:
    """The lean backend exists to keep cffi and pycparser (~1.8 MB) out of a proxy: a pycryptodome
    upgrade that picks its binding another way must fail here, not quietly cost the memory again."""
    assert run_python(LEAN_BACKEND) == {"backend": "ctypes", "cffi_loaded": False}


def test_loading_the_lean_backend_does_not_refuse_cffi_to_other_threads() -> None:
    """The old ``sys.modules["cffi"] = None`` swap made every thread's ``import cffi`` fail meanwhile."""
    result = run_python(OTHER_THREAD)
    assert result == {"other": "imported cffi", "held": True, "sealed": True}
