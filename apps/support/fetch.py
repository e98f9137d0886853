"""Fetching web pages and sitemaps for the knowledge base, without letting a URL reach what it must not.

    async with Fetcher(FetchPolicy.from_settings(settings)) as fetcher:
        page = await fetcher.page("https://help.example.com/returns")   # FetchedPage
        urls = await fetcher.sitemap("https://help.example.com/sitemap.xml")

Every hop, the URL and each redirect, is checked before a byte is sent to it:

* the scheme is http or https, with no ``user:password@``;
* the host is on ``allow_hosts`` (``help.example.com``, ``*.example.com`` for its subdomains, or
  ``*`` for any public host). An empty list turns URL ingest off;
* the host is resolved and *every* address (IPv4 and IPv6) must be public: loopback, private,
  link-local, multicast, reserved, unspecified and other non-global ranges (carrier-grade NAT,
  IPv4 inside IPv6...) are refused, unless ``allow_private``;
* the connection goes to the address that was checked: the URL's host is swapped for it, while the
  ``Host`` header and TLS (SNI and the certificate check) still name the host. A DNS answer that
  changes between the check and the connect (rebinding) cannot move the request elsewhere.
  Proxies from the environment are not used, for the same reason.

Limits: at most ``max_redirects`` redirects; the body is streamed and the fetch stops past
``max_bytes``; one deadline of ``timeout_s`` covers the whole fetch (resolving, redirects, the
body); pages must be HTML, Markdown, plain text or PDF, sitemaps XML (or gzipped XML), and a
sitemap gives at most ``max_urls`` URLs (a sitemap index is followed one level down).

Failures, and the HTTP status each becomes (``apps/errors.py``):

    UrlRefusedError       400  url_refused       a URL, host or address this policy does not allow
    FetchTooLargeError    413  input_too_large   a body over max_bytes
    UpstreamError         422  upstream_error    an error status, a connection failure, a type we do not take
    UpstreamTimeoutError  422  upstream_timeout  no complete answer within timeout_s

A slow page is the caller's input, not this server failing, so it is a 422 that names the limit
rather than a 504.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from defusedxml import ElementTree

from apps.http.egress import address_problem
from core.errors import InputTooLargeError, InvalidRequestError, UpstreamError

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> the IP addresses it resolves to."""

PAGE_TYPES = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
    "application/pdf": "pdf",
}
SITEMAP_TYPES = {
    "application/xml": "xml",
    "text/xml": "xml",
    "application/gzip": "gzip",
    "application/x-gzip": "gzip",
}
REDIRECTS = {301, 302, 303, 307, 308}


class UrlRefusedError(InvalidRequestError):
    error_type = "url_refused"


class FetchTooLargeError(InputTooLargeError):
    pass


class UpstreamTimeoutError(UpstreamError):
    error_type = "upstream_timeout"


@dataclass(frozen=True)
class FetchPolicy:
    allow_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    max_bytes: int = 5_000_000
    timeout_s: float = 15.0
    max_redirects: int = 3
    max_urls: int = 200
    user_agent: str = "domainllm-kb/0.1 (+knowledge-base ingest)"

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.timeout_s <= 0 or self.max_redirects < 0 or self.max_urls < 1:
            raise ValueError("max_bytes, timeout_s and max_urls must be positive and max_redirects >= 0")
        object.__setattr__(self, "allow_hosts", tuple(_normal_host(h) for h in self.allow_hosts if h.strip()))

    @classmethod
    def from_settings(cls, settings: Any) -> FetchPolicy:
        """From ``SupportSettings`` (its ``fetch_*`` fields)."""
        return cls(
            allow_hosts=tuple(settings.fetch_allow_hosts),
            allow_private=settings.fetch_allow_private,
            max_bytes=settings.fetch_max_bytes,
            timeout_s=settings.fetch_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            max_urls=settings.fetch_max_urls,
        )

    def host_allowed(self, host: str) -> bool:
        host = _normal_host(host)
        for entry in self.allow_hosts:
            if entry == "*" or entry == host:
                return True
            if entry.startswith("*.") and host.endswith(entry[1:]):
                return True
        return False


@dataclass(frozen=True)
class FetchedPage:
    url: str  # as asked
    final_url: str  # after redirects
    content_type: str
    kind: str  # html, markdown, text, pdf (xml, gzip for sitemaps)
    data: bytes


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".").strip("[]")
    if host.startswith("*."):
        return "*." + _normal_host(host[2:])
    try:
        return host.encode("idna").decode("ascii") if host != "*" and not host.isascii() else host
    except UnicodeError:
        return host


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, policy: FetchPolicy) -> httpx.URL:
    """The parsed URL if its scheme, credentials and host pass ``policy`` (no network yet)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UrlRefusedError(f"{url!r} is not a valid URL: {exc}", url=url) from None
    if parsed.scheme not in ("http", "https"):
        raise UrlRefusedError(f"{url}: only http and https URLs can be fetched", url=url)
    if parsed.userinfo:
        raise UrlRefusedError(f"{url}: URLs with a user name or password are refused", url=url)
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UrlRefusedError(f"{url}: the URL has no host", url=url)
    if not policy.allow_hosts:
        raise UrlRefusedError(
            "URL ingest is off: list the hosts it may fetch from in DOMAINLLM_SUPPORT_FETCH_ALLOW_HOSTS "
            '(e.g. ["help.example.com"])',
            url=url,
        )
    if not policy.host_allowed(host):
        raise UrlRefusedError(
            f"{url}: host {host} is not in DOMAINLLM_SUPPORT_FETCH_ALLOW_HOSTS ({', '.join(policy.allow_hosts)})",
            url=url,
            host=host,
        )
    return parsed


class Fetcher:
    """One client for a batch of fetches; ``resolver`` is swappable (tests), the checks are not."""

    def __init__(self, policy: FetchPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self._resolver = resolver or system_resolver
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Fetcher:
        self._client = httpx.AsyncClient(
            follow_redirects=False,  # each hop is checked here
            trust_env=False,  # a proxy would resolve the host itself, past the pinned address
            timeout=httpx.Timeout(self.policy.timeout_s),
            headers={"User-Agent": self.policy.user_agent, "Accept-Encoding": "identity"},
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def page(self, url: str) -> FetchedPage:
        """A page to ingest: HTML, Markdown, plain text or PDF."""
        return await self._deadline(url, self._get(url, PAGE_TYPES, "HTML, Markdown, plain text or PDF"))

    async def sitemap(self, url: str) -> list[str]:
        """The page URLs a sitemap lists (a sitemap index: those of its sitemaps), at most ``max_urls``."""
        urls: list[str] = []
        for loc in await self._sitemap_locs(url, nested=True):
            if loc not in urls:
                urls.append(loc)
            if len(urls) >= self.policy.max_urls:
                break
        if not urls:
            raise UpstreamError(f"{url}: the sitemap lists no URLs", url=url)
        return urls

    async def _sitemap_locs(self, url: str, *, nested: bool) -> list[str]:
        fetched = await self._deadline(url, self._get(url, SITEMAP_TYPES, "an XML sitemap"))
        data = fetched.data
        if fetched.kind == "gzip" or data[:2] == b"\x1f\x8b":
            data = self._gunzip(url, data)
        try:
            root = ElementTree.fromstring(data)
        except Exception as exc:  # defusedxml's refusals and expat's parse errors
            raise UpstreamError(f"{url}: not a readable sitemap: {type(exc).__name__}: {exc}", url=url) from None
        kind = _local(root.tag)
        locs = [(el.text or "").strip() for el in root.iter() if _local(el.tag) == "loc"]
        locs = [loc for loc in locs if loc]
        if kind == "urlset":
            return locs
        if kind != "sitemapindex":
            raise UpstreamError(f"{url}: not a sitemap (root element <{kind}>, not <urlset> or <sitemapindex>)")
        if not nested:
            return []  # an index inside an index: not followed
        out: list[str] = []
        for child in locs:
            if len(out) >= self.policy.max_urls:
                break
            out.extend(await self._sitemap_locs(child, nested=False))
        return out

    def _gunzip(self, url: str, data: bytes) -> bytes:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(data, self.policy.max_bytes + 1)
        except zlib.error as exc:
            raise UpstreamError(f"{url}: a broken gzip sitemap: {exc}", url=url) from None
        if len(out) > self.policy.max_bytes:
            raise FetchTooLargeError(
                f"{url}: the sitemap is over {self.policy.max_bytes} bytes unpacked (DOMAINLLM_SUPPORT_FETCH_MAX_BYTES)",
                limit=self.policy.max_bytes,
                actual=len(out),
            )
        return out

    async def _deadline(self, url: str, work: Awaitable[FetchedPage]) -> FetchedPage:
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                return await work
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"{url}: no complete answer within {self.policy.timeout_s:g} s "
                "(DOMAINLLM_SUPPORT_FETCH_TIMEOUT_S); the page is too slow or too big for the link",
                url=url,
                timeout_s=self.policy.timeout_s,
            ) from None

    async def _pinned_address(self, url: httpx.URL) -> str:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = [host] if _is_ip(host) else await self._resolver(host, port)
        except OSError as exc:
            raise UpstreamError(f"{url}: cannot resolve {host}: {exc}", url=str(url)) from None
        if not addresses:
            raise UpstreamError(f"{url}: {host} has no address", url=str(url))
        if not self.policy.allow_private:
            for address in addresses:
                problem = address_problem(address)
                if problem:
                    where = f"{host} is {problem}" if address == host else f"{host} resolves to {address}, {problem}"
                    raise UrlRefusedError(
                        f"{url}: {where}; only public addresses can be fetched "
                        "(DOMAINLLM_SUPPORT_FETCH_ALLOW_PRIVATE=true allows others)",
                        url=str(url),
                        address=address,
                    )
        return addresses[0]

    async def _get(self, url: str, types: dict[str, str], wanted: str) -> FetchedPage:
        assert self._client is not None, "use Fetcher in an 'async with'"
        current = check_url(url, self.policy)
        for _hop in range(self.policy.max_redirects + 1):
            address = await self._pinned_address(current)
            target = current.copy_with(host=address)
            extensions = {"sni_hostname": current.raw_host.decode("ascii")} if current.scheme == "https" else {}
            headers = {"Host": current.netloc.decode("ascii")}
            try:
                async with self._client.stream("GET", target, headers=headers, extensions=extensions) as response:
                    if response.status_code in REDIRECTS and "location" in response.headers:
                        current = check_url(str(current.join(response.headers["location"])), self.policy)
                        continue
                    return await self._read(url, str(current), response, types, wanted)
            except httpx.TimeoutException:
                raise TimeoutError from None  # the deadline's message says it
            except httpx.TransportError as exc:
                raise UpstreamError(f"{current}: cannot fetch: {type(exc).__name__}: {exc}", url=url) from None
        raise UpstreamError(f"{url}: more than {self.policy.max_redirects} redirects", url=url)

    async def _read(
        self, url: str, final: str, response: httpx.Response, types: dict[str, str], wanted: str
    ) -> FetchedPage:
        if not 200 <= response.status_code < 300:
            raise UpstreamError(f"{final} answered HTTP {response.status_code}", url=url, status=response.status_code)
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        kind = types.get(content_type)
        if kind is None:
            raise UpstreamError(
                f"{final} is {content_type or 'of no stated type'}; only {wanted} can be ingested",
                url=url,
                content_type=content_type,
            )
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(final, int(declared))
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > limit:
                raise self._too_large(final, len(body))
        return FetchedPage(url, final, content_type, kind, bytes(body))

    def _too_large(self, url: str, size: int) -> FetchTooLargeError:
        limit = self.policy.max_bytes
        return FetchTooLargeError(
            f"{url}: the page is over the {limit}-byte limit (DOMAINLLM_SUPPORT_FETCH_MAX_BYTES)",
            limit=limit,
            actual=size,
            url=url,
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _local(tag: Any) -> str:
    """An element's name without its namespace: ``{http://www.sitemaps.org/...}urlset`` -> ``urlset``."""
    return str(tag).rsplit("}", 1)[-1]
