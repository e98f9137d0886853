"""Where the server may send requests of its own: public addresses only, unless told otherwise.

Knowledge-base fetching (``apps.support.fetch``) and the webhooks a tenant configures (its alert and
handoff receivers, ``apps.tenants.delivery``) go to URLs that someone outside the operator chose.
Each host is resolved and *every* address must be public: loopback, private, link-local, multicast,
reserved and unspecified addresses (IPv4 inside IPv6 included) are refused, so a URL cannot reach the
server's own Redis, a cloud metadata endpoint or the office network.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import httpx

_ADDRESS_CHECKS = (
    ("is_loopback", "a loopback address"),
    ("is_unspecified", "an unspecified address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_reserved", "a reserved address"),
    ("is_private", "a private address"),
)


def address_problem(address: str) -> str | None:
    """Why ``address`` must not be fetched ("a loopback address"...), or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for attribute, words in _ADDRESS_CHECKS:
        if getattr(ip, attribute):
            return words
    if not ip.is_global:
        return "not a public address"
    return None


def destination_problem(url: str) -> str | None:
    """Why the server must not send to ``url`` (a scheme other than http(s), credentials in it, a
    host that does not resolve or resolves to an address that is not public), or None."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        return f"not a valid URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        return "only http and https URLs are allowed"
    if parsed.userinfo:
        return "URLs with a user name or password are refused"
    host = parsed.host
    if not host:
        return "the URL has no host"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"{host} does not resolve ({exc.strerror or exc})"
    for address in dict.fromkeys(str(info[4][0]) for info in infos):
        problem = address_problem(address)
        if problem:
            return f"{host} is {problem}" if address == host else f"{host} resolves to {address}, {problem}"
    return None


def host_of(url: str) -> str:
    """Where a webhook points, without its path or query: a Slack-style URL's path is its secret, and
    delivery errors are stored and shown (GET /v1/sentiment/alerts, GET /v1/tenant/delivery)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")
