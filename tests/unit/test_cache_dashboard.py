"""The dashboard's bounded bookkeeping (minute ring, endpoint table) and its page's safety properties."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetci.cache.activity import ENDPOINTS_MAX, RING_MINUTES, TEMPLATE_MAX, Activity, template


def test_templates_fold_names_ids_and_shas() -> None:
    assert template("/repos/octo/api/actions/runs/42?page=2") == "/repos/{owner}/{repo}/actions/runs/{id}"
    assert template("/orgs/octo-org/actions/runners?per_page=100") == "/orgs/{org}/actions/runners"
    assert template("/repos/o/r/commits/0123abc9f00d") == "/repos/{owner}/{repo}/commits/{sha}"
    assert template("/repos/o/r/contents/docs/a/b.md") == "/repos/{owner}/{repo}/contents/{path}"
    assert (
        template("/repos/o/r/branches/main/protection") == "/repos/{owner}/{repo}/branches/{name}/protection"
    )
    assert template("/users/alice/repos") == "/users/{user}/repos"
    assert template("/repos/o") == "/repos/{owner}"
    assert template("/user") == "/user"
    # client-chosen bytes stay as text (the page escapes them), decoded and cut to a bounded length
    assert template("/x/%3Cb%3E") == "/x/<b>"
    assert len(template("/" + "a" * 5000)) <= TEMPLATE_MAX


def test_minute_ring_keeps_one_hour_of_fixed_outcomes() -> None:
    now = [0.0]
    act = Activity(clock=lambda: now[0])
    for minute in range(RING_MINUTES * 2):
        now[0] = minute * 60.0
        act.count("HIT")
        act.count("MISS")
        act.count("not-an-outcome")  # ignored: the bucket's keys are fixed
    got = act.minutes()
    assert len(got) == RING_MINUTES
    assert got[-1]["t"] == (RING_MINUTES * 2 - 1) * 60
    assert all(set(b["counts"]) == set(got[0]["counts"]) and b["counts"]["HIT"] == 1 for b in got)
    now[0] += 2 * 3600  # an idle proxy shows an empty hour, not an old one
    assert act.minutes() == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=300))
def test_endpoint_table_stays_bounded_whatever_paths_clients_send(segments: list[str]) -> None:
    act = Activity()
    for i, seg in enumerate(segments):
        path = "/" + seg.replace("?", "")
        act.charged(path) if i % 2 else act.saved(path)
    assert len(act._endpoints) <= ENDPOINTS_MAX
    assert len(act.endpoints(limit=1000)) <= ENDPOINTS_MAX


def test_heavy_endpoint_survives_a_flood_of_distinct_urls() -> None:
    act = Activity()
    for _ in range(50):
        act.charged("/orgs/octo-org/actions/runners")
    for i in range(5000):  # distinct literal paths, each charged once
        act.charged(f"/flood-{i}")
    top = act.endpoints(limit=1)[0]
    assert top == {"path": "/orgs/{org}/actions/runners", "charged": 50, "saved": 0}
    assert len(act._endpoints) == ENDPOINTS_MAX


def test_page_has_no_external_resource_and_its_csp_allows_only_its_own_code() -> None:
    from fleetci.cache.dashboard import CSP, PAGE, SCRIPT

    text = PAGE.decode()
    assert not re.search(r"(src|href)=\"(?!data:)[^\"#]", text), "the page loads nothing from elsewhere"
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text
    assert "innerHTML" not in SCRIPT and "insertAdjacentHTML" not in SCRIPT and "eval(" not in SCRIPT
    assert "default-src 'none'" in CSP and "connect-src 'self'" in CSP and "unsafe-inline" not in CSP


def test_a_proxy_without_p2p_loads_no_heavy_module_it_does_not_use() -> None:
    """Issue 16: a host proxy within 50 MB. What ``fleetci cache serve`` imports before serving (without
    P2P, before a /metrics scrape) leaves out prometheus_client, cryptography, libp2p/trio and the other
    capabilities' modules; /metrics and P2P import theirs when used."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from fleetci.cli import build_parser\n"
        "args = build_parser('cache').parse_args(['cache', 'serve'])\n"
        "import fleetci.cache.server, fleetci.cache.dashboard\n"
        "heavy = ('prometheus_client', 'cryptography', 'libp2p', 'trio', 'fleetci.p2p', 'fleetci.multiarch',"
        " 'fleetci.registry', 'fleetci.buildfarm', 'fleetci.install', 'tenacity', 'httpx')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_lease_holder_asking_again_gets_the_same_answer(tmp_path: object) -> None:
    """Review 25, 5: a datagram answer "fresh" that was lost is asked again on the lease line; the owner
    repeats it (a "granted" would send the asker upstream instead of to the fleet's fresh copy)."""
    import asyncio

    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.peering import LEASE_FRESH, LEASE_GRANTED, LEASE_WAIT
    from fleetci.cache.settings import cache_settings

    engine = CacheEngine(cache_settings({"cache_dir": str(tmp_path)}, {}, {}))
    try:
        engine._hint("k", engine.clock() + 60)  # fetched a moment ago
        assert engine.answer_lease("k", "peerA") == LEASE_FRESH
        assert engine.answer_lease("k", "peerA") == LEASE_FRESH  # the lost answer, again
        assert engine.answer_lease("k", "peerB") == LEASE_WAIT
        assert engine.answer_lease("k2", "peerA") == LEASE_GRANTED
        engine._hint("k2", engine.clock() + 60)
        assert engine.answer_lease("k2", "peerA") == LEASE_GRANTED  # what it was told, not a new answer
    finally:
        asyncio.run(engine.close())


def test_key_owner_grants_one_lease_at_a_time(tmp_path: object) -> None:
    """Issue 16: the owner of a key lets one node fetch it; others wait until its announcement (or its
    release) ends the lease; every node computes the same owner from the same fleet."""
    import asyncio

    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.settings import cache_settings

    engine = CacheEngine(cache_settings({"cache_dir": str(tmp_path)}, {}, {}))
    try:
        assert engine.grant_lease("k", "peerA") and engine.grant_lease("k", "peerA")  # the holder may re-ask
        assert not engine.grant_lease("k", "peerB") and not engine.grant_lease("k", "me")
        assert engine.grant_lease("other-key", "peerB")
        engine.accept_claims([])  # nothing changes without an announcement or a release
        assert not engine.grant_lease("k", "peerB")
        from fleetci.cache.peering import Claim

        engine.accept_claims([Claim("k", "scope", "peerA", release=True)])  # the holder gave up
        assert engine.grant_lease("k", "peerB")
        fleet = ["peerA", "peerB", "peerC", "peerD"]
        owners = {engine.owner_of(f"key{i}", fleet) for i in range(200)}
        assert owners == set(fleet)  # keys spread over the fleet
        assert all(
            engine.owner_of(f"key{i}", fleet) == engine.owner_of(f"key{i}", fleet[::-1]) for i in range(50)
        )
    finally:
        asyncio.run(engine.close())


def test_credential_labels_are_keyed_per_process_not_by_the_fixed_salt() -> None:
    """Review 7: the dashboard's label of a credential says nothing across processes (no stable id to
    follow across restarts, nothing to check a guessed token against) and is not the scope hash."""
    import subprocess
    import sys

    from fleetci.cache.dashboard import LABEL_CHARS, label_of
    from fleetci.cache.policy import scope_of

    scope = scope_of("token ghp_guessed")
    mine = label_of(scope)
    assert len(mine) == LABEL_CHARS and mine != scope[:LABEL_CHARS] and label_of(scope) == mine
    code = f"from fleetci.cache.dashboard import label_of; print(label_of({scope!r}))"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert other.stdout.strip() not in (mine, scope[:LABEL_CHARS])
