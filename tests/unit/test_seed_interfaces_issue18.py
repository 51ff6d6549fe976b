"""Seed interfaces of issue 18: ContentHasher (seed 004) over the p2p layer's CID code, .env.cache."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from multiformats import CID, multihash

from fleetci.cache.settings import cache_settings
from fleetci.cache.store import Entry
from fleetci.p2p.content import ContentHasher
from support import RunCli, clean_env


def test_hash_content_is_the_cid_peers_announce_for_a_body() -> None:
    body = b'{"workflows":[],"count":5}'
    entry = Entry.create("k", "", "/x", 200, (), body, ttl=60)
    cid = ContentHasher.hash_content(body)
    assert cid == entry.cid()
    # and it is a real CIDv1/raw/sha2-256 as multiformats decodes it (the seed's "bafkrei…" form)
    decoded = CID.decode(cid)
    assert (decoded.version, decoded.codec.name) == (1, "raw")
    assert multihash.unwrap(decoded.digest) == hashlib.sha256(body).digest()
    assert cid.startswith("bafkrei")


def test_json_data_is_hashed_canonically() -> None:
    a = {"workflows": [1, 2], "count": 5}
    b = {"count": 5, "workflows": [1, 2]}
    assert ContentHasher.hash_content(a) == ContentHasher.hash_content(b)
    assert ContentHasher.hash_content(a) == ContentHasher.hash_content(b'{"count":5,"workflows":[1,2]}')
    assert ContentHasher.hash_content("héllo") == ContentHasher.hash_content("héllo".encode())


def test_verify_hash() -> None:
    data = {"workflows": ["ci"], "count": 1}
    cid = ContentHasher.hash_content(data)
    assert ContentHasher.verify_hash(data, cid)
    assert not ContentHasher.verify_hash({"workflows": ["ci"], "count": 2}, cid)
    assert not ContentHasher.verify_hash(data, cid[:-1] + ("a" if cid[-1] != "a" else "b"))
    assert not ContentHasher.verify_hash(data, "not-a-cid-é")
    assert not ContentHasher.verify_hash(data, None)  # type: ignore[arg-type]
    assert not ContentHasher.verify_hash(object(), cid)


def test_unhashable_data_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot hash object"):
        ContentHasher.hash_content(object())
    with pytest.raises(TypeError):
        ContentHasher.hash_content(float("nan"))


# --- .env.cache: environment defaults below the real environment -----------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_env_cache_example_copied_as_is_is_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shutil.copy(REPO / ".env.cache.example", tmp_path / ".env.cache")
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith(("CACHE_", "FLEETCI_")):
            monkeypatch.delenv(k)
    s = cache_settings({}, {})
    assert (s.listen_port, s.default_ttl, s.max_entries, s.enable_p2p) == (9000, 300, 10000, False)


def test_env_cache_sits_between_environment_and_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env.cache").write_text(
        "# comment\n\nexport CACHE_DEFAULT_TTL=600\nCACHE_LISTEN_PORT='9005'\n"
        f'CACHE_DIR="{tmp_path / "from-env-file"}"\nCACHE_MAX_ENTRIES=77  # trailing comment\n'
    )
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith(("CACHE_", "FLEETCI_")):
            monkeypatch.delenv(k)
    config = {"cache": {"default_ttl": 5, "listen_port": 9006, "max_entries": 5}}
    s = cache_settings({}, config)
    assert (s.default_ttl, s.listen_port, s.max_entries) == (600, 9005, 77)  # .env.cache > config file
    assert s.cache_dir == tmp_path / "from-env-file"
    monkeypatch.setenv("CACHE_DEFAULT_TTL", "42")  # a real variable > .env.cache
    monkeypatch.setenv("CACHE_LISTEN_PORT", "")  # empty is unset: .env.cache still counts
    s = cache_settings({"max_entries": 3}, config)  # a flag > everything
    assert (s.default_ttl, s.listen_port, s.max_entries) == (42, 9005, 3)
    # an explicit env mapping (tests, benchmarks) is taken as the whole environment: no file read
    assert cache_settings({}, {}, {}).default_ttl == 300


def test_cli_reads_env_cache_and_refuses_a_typo(
    fleetci: RunCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    where = tmp_path / "dir-from-dotenv"
    (tmp_path / ".env.cache").write_text(f"CACHE_DIR={where}\n")
    r = fleetci("cache", "stats", "--json", env=clean_env())
    assert r.returncode != 0 and f"no cache at {where}" in r.stderr
    (tmp_path / ".env.cache").write_text("CACHE_DEFAULT_TLL=60\n")
    r = fleetci("cache", "stats", env=clean_env())
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "fleetci: error: .env.cache:1: unknown cache variable 'CACHE_DEFAULT_TLL'"
        " (did you mean 'CACHE_DEFAULT_TTL'?)"
    ]
    (tmp_path / ".env.cache").write_text("just words\n")
    r = fleetci("cache", "stats", env=clean_env())
    assert r.returncode == 2 and "fleetci: error: .env.cache:1: expected NAME=value" in r.stderr


# --- README "Coming from the seed systems": the table's checkable claims hold ------------------------


def seed_table() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Coming from the seed systems")
    return readme[start : readme.index("\n## ", start + 1)]


def test_seed_table_names_exist() -> None:
    import importlib
    import re

    import tomllib

    from fleetci.buildfarm.settings import MASTER_URL
    from fleetci.cache.settings import CacheOptions, env_names
    from fleetci.registry.settings import RegistryOptions

    table = seed_table()
    known_env = env_names() | {e for s in RegistryOptions.settings for e in s.env} | set(MASTER_URL.env)
    for name in re.findall(r"`((?:CACHE|FLEETCI|GITLAB|CI_REGISTRY)_[A-Z0-9_]+)", table):
        assert name in known_env, name
    # every fleetci-side path the table names exists
    paths = [
        *("scripts/p2p_peer_bootstrap.sh", "scripts/safe_install.py", "scripts/gh_gitlab_sync.py"),
        *(
            "scripts/setup_arm64_runner.sh",
            "workflows/multi-arch-ci.yml",
            "workflows/presto-build-and-sync.yml",
        ),
        *(".env.cache.example", "docs/self-hosted.md"),
    ]
    for path in paths:
        assert f"`{path}" in table or f"({path})" in table or f"`{path.removeprefix('scripts/')}" in table, (
            path
        )
        assert (REPO / path).exists(), path
    # the APIs
    apis = ["fleetci.cache.CachedGitHubCLI", "fleetci.cache.get_cache", "fleetci.cache.get_global_cache"]
    for dotted in [*apis, "fleetci.cache.start_cache_network", "fleetci.p2p.content.ContentHasher"]:
        assert f"`{dotted}`" in table, dotted
        module, name = dotted.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name))
    # the deliberate differences, as the code has them
    defaults = {s.name: s.default for s in CacheOptions.settings}
    assert (defaults["enable_p2p"], defaults["listen_port"], defaults["public_bootstrap"]) == (
        False,
        9100,
        False,
    )
    assert (defaults["default_ttl"], defaults["max_entries"]) == (300, 10000)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "p2p" in extras and "libp2p" not in extras
    assert "**default `~/.cache/fleetci`**" in table and "**the extra is `[p2p]`**" in table
    for job in ("test-multi-arch", "test-arm64-native", "verify-dependencies"):
        assert f"\n  {job}:" in (REPO / "workflows/multi-arch-ci.yml").read_text()
    presto = (REPO / "workflows/presto-build-and-sync.yml").read_text()
    row = next(line for line in table.splitlines() if "presto-build-images.yml" in line)
    for name in re.findall(r"`([a-z_]+)`", row.split("|")[1]):
        assert f"\n      {name}:" in presto, name
