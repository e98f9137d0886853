"""Safe URL fetching for the knowledge base (apps/support/fetch.py): the refusals (loopback,
private and other non-public addresses, hosts off the allowlist, redirects that lead there,
oversized and slow pages, types we do not take) and sitemaps.

No test sends a packet anywhere but 127.0.0.1: private addresses come from a fake resolver and are
refused before any connection; the pages that are fetched come from a real HTTP server on
loopback, which those tests allow with ``allow_private``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from apps.support import fetch
from apps.support.fetch import (
    Fetcher,
    FetchPolicy,
    FetchTooLargeError,
    UpstreamTimeoutError,
    UrlRefusedError,
    address_problem,
    check_url,
)
from core.errors import UpstreamError

pytestmark = pytest.mark.unit

PAGE = (
    b"<html><head><title>Returns</title></head><body><h1>Returns</h1><p>Return items within 30 days.</p></body></html>"
)
BIG = 64 * 1024


def sitemap(*locs: str) -> bytes:
    entries = "".join(f"<url><loc>{loc}</loc></url>" for loc in locs)
    return (
        f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'.encode()
    )


BOMB = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;">]><urlset><url><loc>&lol3;</loc></url></urlset>"""


class Handler(BaseHTTPRequestHandler):
    """Pages by path; every failure on the server side (a client that hung up) is swallowed."""

    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))
        base = f"http://127.0.0.1:{self.server.server_port}"
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.route(base)

    def route(self, base: str) -> None:
        path = self.path
        if path == "/page.html":
            self.send(200, PAGE)
        elif path == "/guide.md":
            self.send(200, b"# Guide\n\n- step one\n- step two\n", "text/markdown")
        elif path == "/host":
            self.send(200, f"<p>host {self.headers.get('Host')}</p>".encode())
        elif path == "/big":  # says how big it is
            self.send(200, b"x" * BIG, "text/plain")
        elif path == "/big-chunked":  # does not say: the stream has to be cut
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(BIG // 4096):
                self.wfile.write(b"1000\r\n" + b"y" * 4096 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/slow":  # nothing for a long while
            time.sleep(3)
            self.send(200, PAGE)
        elif path == "/trickle":  # a byte at a time, each in time for a per-read timeout
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"z")
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/to-evil":
            self.send(302, b"", Location="http://evil.example.com/steal")
        elif path == "/to-internal":
            self.send(302, b"", Location="http://internal.example.com/admin")
        elif path == "/to-page":
            self.send(301, b"", Location="/page.html")
        elif path == "/loop":
            self.send(302, b"", Location="/loop")
        elif path == "/image":
            self.send(200, b"\x89PNG....", "image/png")
        elif path == "/sitemap.xml":
            self.send(200, sitemap(f"{base}/page.html", f"{base}/guide.md", f"{base}/missing"), "application/xml")
        elif path == "/sitemap.xml.gz":
            self.send(200, gzip.compress(sitemap(f"{base}/page.html")), "application/gzip")
        elif path == "/index.xml":
            body = f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><sitemap><loc>{base}/sitemap.xml</loc></sitemap></sitemapindex>'
            self.send(200, body.encode(), "text/xml")
        elif path == "/bomb.xml":
            self.send(200, BOMB, "application/xml")
        else:
            self.send(404, b"not here")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[tuple[str, str | None]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up mid-answer (the size and time limits) is expected here

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


LOCAL = FetchPolicy(allow_hosts=("127.0.0.1",), allow_private=True, max_bytes=BIG // 2, timeout_s=1.0)


class FakeResolver:
    """Answers from a table and records each lookup; never touches DNS."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.table[host]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def get_page(url: str, policy: FetchPolicy, resolver: Any = None) -> fetch.FetchedPage:
    async with Fetcher(policy, resolver) as f:
        return await f.page(url)


async def get_sitemap(url: str, policy: FetchPolicy) -> list[str]:
    async with Fetcher(policy) as f:
        return await f.sitemap(url)


# ---- the policy, before any network -------------------------------------------------------------


def test_url_ingest_is_off_until_hosts_are_allowed() -> None:
    with pytest.raises(UrlRefusedError, match="DOMAINLLM_SUPPORT_FETCH_ALLOW_HOSTS"):
        check_url("https://help.example.com/a", FetchPolicy())


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://help.example.com/a", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("https://user:pw@help.example.com/a", "user name or password"),
        ("https://evil.example.org/a", "not in DOMAINLLM_SUPPORT_FETCH_ALLOW_HOSTS"),
        ("https://help.example.com.evil.org/a", "not in"),
        ("http://", "no host"),
        ("not a url", "only http"),
    ],
)
def test_refused_urls(url: str, needle: str) -> None:
    policy = FetchPolicy(allow_hosts=("help.example.com", "*.docs.example.com"))
    with pytest.raises(UrlRefusedError, match=needle):
        check_url(url, policy)


def test_allowlist_entries() -> None:
    policy = FetchPolicy(allow_hosts=("Help.Example.com.", "*.docs.example.com", "bücher.de"))
    assert policy.host_allowed("help.example.com")
    assert policy.host_allowed("en.docs.example.com") and not policy.host_allowed("docs.example.com.evil.org")
    assert not policy.host_allowed("docs.example.com") and not policy.host_allowed("example.com")
    assert policy.host_allowed("xn--bcher-kva.de")
    assert FetchPolicy(allow_hosts=("*",)).host_allowed("anything.example")


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not a public address"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4 inside IPv6
        ("::ffff:10.0.0.1", "private"),
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
    ],
)
def test_address_problems(address: str, problem: str | None) -> None:
    found = address_problem(address)
    assert (found is None) if problem is None else (found is not None and problem in found)


# ---- refusals at the network step (nothing is sent) ----------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/page", "http://localhost:9/page", "http://[::1]:9/page"])
def test_loopback_is_refused_unless_allowed(url: str) -> None:
    policy = FetchPolicy(allow_hosts=("127.0.0.1", "localhost", "::1"), timeout_s=2)
    with pytest.raises(UrlRefusedError, match="loopback"):
        run(get_page(url, policy))


@pytest.mark.parametrize(
    ("host", "addresses", "problem"),
    [
        ("intranet.example.com", ["10.0.0.5"], "private"),
        ("router.example.com", ["192.168.1.1"], "private"),
        ("metadata.example.com", ["169.254.169.254"], "link-local"),
        ("v6.example.com", ["fd00::7"], "private"),
        ("mapped.example.com", ["::ffff:127.0.0.1"], "loopback"),
        ("mixed.example.com", ["93.184.216.34", "10.9.8.7"], "private"),  # every address is checked
    ],
)
def test_hosts_resolving_to_private_addresses_are_refused(host: str, addresses: list[str], problem: str) -> None:
    resolver = FakeResolver({host: addresses})
    policy = FetchPolicy(allow_hosts=(host,), timeout_s=2)
    with pytest.raises(UrlRefusedError, match=problem):
        run(get_page(f"https://{host}/help", policy, resolver))
    assert resolver.calls == [host]


def test_a_host_off_the_allowlist_is_never_resolved() -> None:
    resolver = FakeResolver({})
    with pytest.raises(UrlRefusedError, match="not in"):
        run(get_page("https://other.example.com/", FetchPolicy(allow_hosts=("help.example.com",)), resolver))
    assert resolver.calls == []


# ---- a real server on loopback ---------------------------------------------------------------------


def test_a_page_is_fetched(server: Server) -> None:
    page = run(get_page(f"{server.base}/page.html", LOCAL))
    assert page.kind == "html" and page.data == PAGE and page.final_url == f"{server.base}/page.html"
    redirected = run(get_page(f"{server.base}/to-page", LOCAL))
    assert redirected.final_url == f"{server.base}/page.html" and redirected.url == f"{server.base}/to-page"


def test_the_connection_is_pinned_to_the_checked_address(server: Server) -> None:
    """The host is resolved once, the connection goes to that address, and the server still sees
    the host name (so a second, rebinding DNS answer is never asked for)."""
    resolver = FakeResolver({"docs.example.com": ["127.0.0.1"]})
    policy = FetchPolicy(allow_hosts=("docs.example.com",), allow_private=True, timeout_s=2)
    page = run(get_page(f"http://docs.example.com:{server.server_port}/host", policy, resolver))
    assert f"host docs.example.com:{server.server_port}".encode() in page.data
    assert resolver.calls == ["docs.example.com"]


def test_oversized_pages_are_cut_off(server: Server) -> None:
    with pytest.raises(FetchTooLargeError, match="FETCH_MAX_BYTES"):
        run(get_page(f"{server.base}/big", LOCAL))  # by its Content-Length
    with pytest.raises(FetchTooLargeError) as info:
        run(get_page(f"{server.base}/big-chunked", LOCAL))  # by counting the stream
    assert info.value.limit == BIG // 2 and info.value.actual > BIG // 2


@pytest.mark.parametrize("path", ["/slow", "/trickle"])
def test_slow_pages_hit_the_deadline(server: Server, path: str) -> None:
    start = time.monotonic()
    with pytest.raises(UpstreamTimeoutError, match="FETCH_TIMEOUT_S"):
        run(get_page(f"{server.base}{path}", LOCAL))
    assert time.monotonic() - start < 2.5  # one deadline for the whole fetch, not one per read


def test_redirects_are_checked_at_every_hop(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UrlRefusedError, match=r"evil\.example\.com is not in"):
        run(get_page(f"{server.base}/to-evil", LOCAL))
    with pytest.raises(UpstreamError, match="more than 3 redirects"):
        run(get_page(f"{server.base}/loop", LOCAL))
    # with private addresses refused (the test server's own address excepted), a redirect to a
    # host that resolves to a private address is refused before it is connected to
    original = fetch.address_problem
    monkeypatch.setattr(fetch, "address_problem", lambda a: None if a == "127.0.0.1" else original(a))
    resolver = FakeResolver({"internal.example.com": ["10.0.0.7"]})
    policy = FetchPolicy(allow_hosts=("127.0.0.1", "internal.example.com"), timeout_s=2)
    with pytest.raises(UrlRefusedError, match=r"10\.0\.0\.7, a private address"):
        run(get_page(f"{server.base}/to-internal", policy, resolver))


def test_error_statuses_and_other_types_are_refused(server: Server) -> None:
    with pytest.raises(UpstreamError, match="HTTP 404"):
        run(get_page(f"{server.base}/missing", LOCAL))
    with pytest.raises(UpstreamError, match="image/png; only HTML, Markdown, plain text or PDF"):
        run(get_page(f"{server.base}/image", LOCAL))
    with pytest.raises(UpstreamError, match="cannot fetch"):
        run(get_page("http://127.0.0.1:9/closed", LOCAL))  # nothing listens on port 9


def test_sitemaps(server: Server) -> None:
    expected = [f"{server.base}/page.html", f"{server.base}/guide.md", f"{server.base}/missing"]
    assert run(get_sitemap(f"{server.base}/sitemap.xml", LOCAL)) == expected
    assert run(get_sitemap(f"{server.base}/index.xml", LOCAL)) == expected  # an index, one level down
    assert run(get_sitemap(f"{server.base}/sitemap.xml.gz", LOCAL)) == expected[:1]
    capped = FetchPolicy(allow_hosts=("127.0.0.1",), allow_private=True, max_urls=2, timeout_s=2)
    assert run(get_sitemap(f"{server.base}/sitemap.xml", capped)) == expected[:2]
    with pytest.raises(UpstreamError, match="not a readable sitemap"):
        run(get_sitemap(f"{server.base}/bomb.xml", LOCAL))  # entities refused by defusedxml
    with pytest.raises(UpstreamError, match="XML sitemap"):
        run(get_sitemap(f"{server.base}/page.html", LOCAL))
