"""Keep py-libp2p's unused optional subsystems out of a proxy's memory.

``import libp2p`` (0.8) loads every subsystem it ships, whatever the host uses: QUIC and WebTransport
(aioquic, pylsqpack, pyOpenSSL, service_identity), mDNS (zeroconf), UPnP (miniupnpc), WebSocket
(trio_websocket, wsproto), AutoTLS/ACME (requests, httpx), IPNS records (cbor2) and, unless public
bootstrap nodes are opted in, RSA identities (pycryptodome). A fleet node uses TCP, Noise,
yamux and gossipsub only, yet those imports cost ~18 MB of every runner's proxy; with 20 runners on one
box that is the difference between fitting a 100 MB budget per node or not.

:func:`install` registers an import hook, only in the ``fleetci cache serve`` process and only for those
third-party packages that are not imported yet, that hands py-libp2p a placeholder module instead. Import,
subclassing, annotations and ``isinstance`` work on placeholders; calling or instantiating anything from
them raises :class:`SlimmedOut`, naming the package, so a code path that does need one fails loudly
instead of misbehaving. ``FLEETCI_P2P_SLIM=0`` turns the hook off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

# Top-level package -> the py-libp2p feature that needs it (none of them is used by fleetci).
SLIMMED: dict[str, str] = {
    "aioquic": "the QUIC/WebTransport transports",
    "pylsqpack": "the WebTransport transport",
    "zeroconf": "mDNS discovery",
    "miniupnpc": "UPnP port mapping",
    "trio_websocket": "the WebSocket transport",
    "wsproto": "the WebSocket transport",
    "requests": "AutoTLS (ACME)",
    "httpx": "AutoTLS (ACME); the proxy itself talks HTTP through aiohttp",
    "httpcore": "AutoTLS (ACME)",
    "h11": "AutoTLS (ACME)",
    "cbor2": "IPNS records",
}
# Only the fleet's own peers (ed25519 keys, Noise) are dialled unless public bootstrap is opted in; the
# public nodes still include RSA identities (``Qm…`` peer IDs), which need pycryptodome.
FLEET_ONLY: dict[str, str] = {"Crypto": "RSA peer identities, SECIO and private networks (pnet)"}
# Optional modules whose importers already cope with ImportError.
ABSENT: dict[str, str] = {"httpx._main": "httpx's command-line tool (click, pygments, rich)"}


class SlimmedOut(RuntimeError):
    """A py-libp2p feature fleetci does not load was used."""


class _Placeholder(type):
    """Metaclass of placeholder classes: attribute chains resolve, any call fails with the reason."""

    _package: str

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}", cls._package)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise SlimmedOut(
            f"{cls.__qualname__} is not loaded: fleetci leaves {cls._package} out of the proxy "
            f"({SLIMMED.get(cls._package) or FLEET_ONLY.get(cls._package, 'unused')}); "
            "set FLEETCI_P2P_SLIM=0 to load it"
        )

    def __getitem__(cls, item: Any) -> Any:  # generic annotations, e.g. Placeholder[int]
        return cls

    def __or__(cls, other: Any) -> Any:  # union annotations, e.g. Placeholder | None
        return cls

    __ror__ = __or__


def _placeholder(qualname: str, package: str) -> _Placeholder:
    # Exception as the base keeps ``except placeholder:`` clauses valid; they simply never match.
    return _Placeholder(qualname, (Exception,), {"__qualname__": qualname, "_package": package})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}", self.__name__.split(".")[0])
        setattr(self, name, value)
        return value


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _StubModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # a package: ``import aioquic.quic.connection`` resolves to stubs too


class _SlimFinder(importlib.abc.MetaPathFinder):
    def __init__(self, packages: frozenset[str]) -> None:
        self.packages = packages

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in ABSENT:
            raise ModuleNotFoundError(
                f"{fullname} is left out of the proxy ({ABSENT[fullname]})", name=fullname
            )
        if fullname.split(".", 1)[0] in self.packages:
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        return None


def install(public_peers: bool = False) -> frozenset[str]:
    """Stub the unused packages for this process; returns what was stubbed (empty if turned off).

    ``public_peers``: the node may dial public libp2p nodes, so keep what their identities need.
    """
    if os.environ.get("FLEETCI_P2P_SLIM", "1").strip().lower() in ("0", "false", "no", "off"):
        return frozenset()
    if any(isinstance(f, _SlimFinder) for f in sys.meta_path) or "libp2p" in sys.modules:
        return frozenset()  # already slimmed, or too late to matter
    wanted = {**SLIMMED, **({} if public_peers else FLEET_ONLY)}
    packages = frozenset(p for p in wanted if p not in sys.modules)
    sys.meta_path.insert(0, _SlimFinder(packages))
    return packages


def stubbed(module: str) -> bool:
    """Whether ``module`` in this process is a placeholder (tests, diagnostics)."""
    return isinstance(sys.modules.get(module), _StubModule)
