"""Outbound safety: URLs Skyport will fetch on somebody's behalf (cloud endpoints, image imports, hooks) must not
reach this machine or the private network it sits in, unless an operator listed that network in
settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS (the demo and the tests list their local peers there).

The check resolves the host and looks at every address it resolves to: one private answer is enough to refuse."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeURLError(ValueError):
    """The URL is malformed, cannot be resolved, or points at an address Skyport refuses to call."""


def allowed_networks() -> list[IPNetwork]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS]


def _kind_of(address: IPAddress) -> str | None:
    """Why this address is refused, or None when it is a public address."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    return None


def check_address(address: str) -> None:
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    reason = _kind_of(ip)
    if reason is None:
        return
    for network in allowed_networks():
        if ip.version == network.version and ip in network:
            return
    raise UnsafeURLError(
        f"{ip} is {reason}: Skyport does not connect there. An operator can allow it by adding its network to "
        "SKYPORT_ALLOWED_PRIVATE_NETWORKS."
    )


def resolve(host: str, port: int | None) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        raise UnsafeURLError(f"The host {host!r} cannot be resolved: check the name.") from e
    return sorted({str(info[4][0]) for info in infos})


def check_url(url: str, *, schemes: tuple[str, ...] = ("https", "http")) -> str:
    """Refuse a URL whose host resolves to a loopback, private, link-local, multicast or reserved address (outside
    the allowed networks). Returns the URL unchanged when it is safe."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise UnsafeURLError(f"The URL is malformed: {e}.") from e
    if parts.scheme.lower() not in schemes:
        raise UnsafeURLError(f"The URL must start with {' or '.join(s + '://' for s in schemes)}.")
    host = parts.hostname
    if not host:
        raise UnsafeURLError("The URL has no host name.")
    if parts.username or parts.password:
        raise UnsafeURLError("Put credentials in the credential fields, not in the URL.")
    for address in resolve(host, port):
        check_address(address)
    return url
