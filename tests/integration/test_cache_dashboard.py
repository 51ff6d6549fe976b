"""The proxy's dashboard in a real browser (Debian chromium, headless) after real traffic, and its CLI."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import httpx

from support import Proxy, RunCli, clean_env, one_line_error

HOSTILE = "%3Cimg%20src%3Dx%20onerror%3D%22document.title%3D'pwned'%22%3E"


def token(login: str) -> str:
    from fleetci.testing import TOKENS

    return next(t for t, who in TOKENS.items() if who == login)


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe, "chromium (Debian package, installed by scripts/test.sh) is required"
    return subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",  # root in CI
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            "--virtual-time-budget=5000",  # run the page's script (its fetch) before dumping
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def png_pixels(data: bytes) -> tuple[int, int, set[tuple[int, int, int]]]:
    """Width, height and the set of RGB colours of an 8-bit RGB/RGBA PNG (what chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    height = ctype = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), (depth, ctype)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if ctype == 6 else 3
    raw, stride = zlib.decompress(idat), width * bpp
    prev = bytearray(stride)
    colours: set[tuple[int, int, int]] = set()
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        colours.update(
            (line[x], line[x + 1], line[x + 2]) for x in range(0, stride, bpp * 4)
        )  # every 4th pixel: enough to see what was drawn
        prev = line
    return width, height, colours


def text_of(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert m, f"no #{element_id} in the rendered page"
    return m.group(1)


def test_dashboard_renders_the_traffic_sent_through_the_proxy_in_chromium(
    emulator: Any, proxy: Proxy, tmp_path: Path
) -> None:
    from fleetci.cache.policy import scope_of

    paths = ["/orgs/octo-org/repos", "/orgs/octo-org/actions/runners", "/user"]
    with proxy.client(token("alice")) as c:
        first = [c.get(p) for p in paths]  # 3 misses, charged
        hits = [c.get(paths[i % 3]) for i in range(7)]  # 7 hits, saved
        hostile = c.get(f"/repos/octo-org/api/{HOSTILE}")  # a client-chosen endpoint name
        # API clients still reach GitHub's root through the proxy; only a browser gets the page
        root = c.get("/")
    assert [r.headers["X-Fleetci-Cache"] for r in first] == ["MISS"] * 3
    assert {r.headers["X-Fleetci-Cache"] for r in hits} == {"HIT"}
    assert hostile.headers["X-Fleetci-Cache"] == "MISS" and "X-Fleetci-Cache" in root.headers
    remaining = int(root.headers.get("X-RateLimit-Remaining") or hostile.headers["X-RateLimit-Remaining"])

    page = httpx.get(f"{proxy.url}/", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]

    dump = chromium("--dump-dom", f"{proxy.url}/", tmp=tmp_path)
    dom = dump.stdout
    assert dump.returncode == 0 and "<main>" in dom, dump.stderr[-2000:]
    assert text_of(dom, "status").startswith("updated"), "the page did not load its JSON"
    assert text_of(dom, "saved") == "7"
    assert text_of(dom, "requests") == "12"  # 3 + 7 + hostile + root
    assert text_of(dom, "hitrate") == f"{100 * 7 / 12:.1f}%"
    row = re.search(
        r"<tr><td>([0-9a-f]{12})</td><td>core</td><td[^>]*>([0-9,]+)</td><td[^>]*>([0-9,]+)</td>", dom
    )
    assert row, "the credential's budget row is missing"
    # review 7: the label is keyed per process, not a prefix of the fixed-salt scope hash (which would be
    # a stable identifier across restarts that a reader could check a guessed token against)
    label, used, limit = row.group(1), row.group(2), row.group(3)
    assert label != scope_of(f"token {token('alice')}")[:12]
    assert int(used.replace(",", "")) <= remaining and limit == "5,000"
    assert token("alice") not in dom  # a hashed label, never the token
    assert re.search(r"<td>/orgs/\{org\}/repos</td><td class=\"n\">1</td><td class=\"n\">[1-9]", dom)
    assert re.search(r'<rect [^>]*data-outcome="HIT"', dom) and re.search(
        r'<rect [^>]*data-outcome="MISS"', dom
    )
    # the hostile endpoint is shown as text, never parsed as markup
    assert "/repos/{owner}/{repo}/&lt;img src=x onerror=" in dom
    assert "<img" not in dom and "pwned" not in re.search(r"<title>(.*?)</title>", dom).group(1)  # type: ignore[union-attr]

    shot = tmp_path / "dashboard.png"
    taken = chromium("--window-size=1200,900", f"--screenshot={shot}", f"{proxy.url}/", tmp=tmp_path)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 900)
    assert len(colours) > 20, "a blank screenshot"
    assert (0x24, 0x29, 0x2F) in colours  # the header bar
    assert (0x2D, 0xA4, 0x4E) in colours and (0xCF, 0x22, 0x2E) in colours  # HIT and MISS drawn by the script


def test_dashboard_command_prints_the_url_or_fails_in_one_line(
    emulator: Any, proxy: Proxy, tmp_path: Path, fleetci: RunCli
) -> None:
    ok = fleetci("cache", "dashboard", "--socket", str(proxy.socket))
    assert ok.returncode == 0 and ok.stdout.strip() == f"{proxy.url}/", ok.stderr
    assert httpx.get(ok.stdout.strip(), headers={"Accept": "text/html"}).text.startswith("<!doctype html>")
    by_url = fleetci("cache", "dashboard", "--url", proxy.url + "/")
    assert by_url.returncode == 0 and by_url.stdout.strip() == f"{proxy.url}/"

    assert "no fleetci proxy" in one_line_error(
        fleetci("cache", "dashboard", "--socket", str(tmp_path / "none.sock"))
    )
    # no proxy of the job's own: the host proxy a job would reuse (issue 16, item 2)

    env = clean_env(CACHE_HOST_PROXY=proxy.url, CACHE_UPSTREAM=emulator.url)
    host = fleetci("cache", "dashboard", "--socket", str(tmp_path / "none.sock"), env=env)
    assert host.returncode == 0 and host.stdout.strip() == f"{proxy.url}/", host.stderr
    from fleetci.http import free_port

    down = fleetci("cache", "dashboard", "--url", f"http://127.0.0.1:{free_port()}")
    assert "no fleetci proxy" in one_line_error(down) and down.returncode == 1
    # something that answers HTTP but is not a fleetci proxy
    assert "no fleetci proxy" in one_line_error(fleetci("cache", "dashboard", "--url", emulator.url))
    bad = fleetci("cache", "dashboard", "--url", "ftp://user:secret@host/")
    assert bad.returncode == 2 and "secret" not in one_line_error(bad)
    wrong = fleetci("cache", "dashboard", "--no-such-flag")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    # API clients (no text/html, or a credential) still reach GitHub's root through the proxy
    for headers in (
        {"Accept": "application/vnd.github+json"},
        {"Accept": "*/*"},
        {},
        {"Accept": "text/html", "Authorization": f"token {token('alice')}"},
    ):
        r = httpx.get(f"{proxy.url}/", headers=headers, timeout=10)
        assert "X-Fleetci-Cache" in r.headers and not r.text.startswith("<!doctype html>"), headers


OBSERVER_PATHS = (
    "/_fleetci/dashboard",
    "/_fleetci/dashboard.json",
    "/_fleetci/stats",
    "/metrics",
    "/_fleetci/peers",
)


def test_observability_routes_refuse_a_foreign_host_dns_rebinding(emulator: Any, proxy: Proxy) -> None:
    """Review 7: a page on evil.example that rebinds its name to 127.0.0.1 makes the browser send
    ``Host: evil.example:PORT`` to the proxy; the budgets, endpoints and peers are refused to it in one
    line, while loopback names read them and GitHub's routes keep accepting any Host."""
    port = proxy.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        for path in (*OBSERVER_PATHS, "/"):
            for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", "[::2]:1"):
                r = c.get(path, headers={"Host": host, "Accept": "text/html"})
                assert r.status_code == 403, (path, host, r.status_code)
                assert "\n" not in r.text.strip() and "DNS rebinding" in r.json()["message"], r.text
                assert "budget" not in r.text and "fleetci_cache" not in r.text
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.0.0.1"):
                ok = c.get(path, headers={"Host": host, "Accept": "text/html"})
                assert ok.status_code == 200, (path, host, ok.text)
        posted = c.post("/_fleetci/p2p/probe", headers={"Host": f"evil.example:{port}"})
        assert posted.status_code == 403
        # GitHub's routes: whatever Host the client names (api.github.com, the runner's name, …)
        api = c.get("/user", headers={"Host": "api.github.com", "Authorization": f"token {token('alice')}"})
        assert api.status_code == 200 and api.json()["login"] == "alice"
        root = c.get("/", headers={"Host": "evil.example", "Accept": "application/json"})
        assert "X-Fleetci-Cache" in root.headers, root.text  # proxied to GitHub's root, not refused
    # several Host headers: refused, whatever they say
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as s:
        s.sendall(
            b"GET /_fleetci/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] in (b"400", b"403"), answer[:200]
    # the unix socket (its permissions decide who may use it) answers whatever Host
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(proxy.socket)), timeout=10) as u:
        assert u.get("http://evil.example/_fleetci/stats").status_code == 200
