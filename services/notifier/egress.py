"""Where the notifier may send: never inside the network, unless an operator listed the address.

Every send passes here (new, retried, replayed, recovered and escalated deliveries alike), because
the check sits in the one send path, not on the way in. A webhook host that is, or resolves to, a
loopback, private, link-local or otherwise non-public address is refused unless it is on the
allow-list (BLONET_EGRESS_ALLOW_LIST) twice over: the URL's host as written AND every address it
resolves to. So listing 127.0.0.1 allows http://127.0.0.1:8100/… but not http://localhost:8100/…
(list "localhost" too for that), and a public name that an attacker's DNS points at 10.0.0.5 is
refused however it is spelled. Names are checked on what the connection itself resolves (the
session's resolver), so a second, different DNS answer cannot slip past the check.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from shared.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(OSError):
    """A send to an address the notifier may not reach; its text is the attempt's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EACCES, reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def allow_list(settings: Settings) -> list[str]:
    """Return the allow-list: configured, else 127.0.0.1 (the demo, test and bench receivers) outside production."""
    if settings.egress_allow_list is not None:
        return settings.egress_allow_list
    return [] if settings.environment == "production" else ["127.0.0.1"]


def kind(address: Address) -> str | None:
    """Return what kind of internal address this is, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for name, internal in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                           ("unspecified", address.is_unspecified), ("private", address.is_private),
                           ("multicast", address.is_multicast)):
        if internal:
            return name
    return None if address.is_global else "non-public"


def _as_ip(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone (%eth0) names no other address
    except ValueError:
        return None


def _listed(value: str, entries: list[str], by_name: bool) -> bool:
    ip = _as_ip(value)
    for entry in entries:
        if ip is None:
            if by_name and value.lower().rstrip(".") == entry.lower().rstrip("."):
                return True
            continue
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:  # a host name entry: it lists names, not addresses
            pass
    return False


def refusal(host: str, addresses: list[str], entries: list[str]) -> str | None:
    """Return why `host`, resolved to `addresses`, may not be sent to, or None if it may (pure)."""
    for text in addresses:
        address = _as_ip(text)
        what = kind(address) if address is not None else "unreadable"
        if what is None:
            continue
        if not (_listed(host, entries, by_name=True) and _listed(text, entries, by_name=False)):
            via = "" if host == text else f"{host} resolves to {text}; "
            return f"refused address: {via}{text} is a {what} address not on the allow-list (BLONET_EGRESS_ALLOW_LIST)"
    return None


def check(url: str, entries: list[str]) -> str | None:
    """Return why the notifier may not send to a webhook URL written with an address, or None.

    aiohttp connects to an address as written without asking the resolver, so it is checked here,
    before any connection. A name is checked by the session's GuardedResolver on what the
    connection itself resolves (also before connecting): resolving it here as well cost a
    thread-pool lookup per send.
    """
    host = urlsplit(url).hostname or ""
    if _as_ip(host) is not None:
        return refusal(host, [host], entries)
    try:  # the legacy numeric spellings (2852039166, 0xA9FEA9FE) name an address without any lookup
        return refusal(host, [socket.inet_ntoa(socket.inet_aton(host))], entries)
    except OSError:
        return None


class GuardedResolver(ThreadedResolver):
    """The resolver of the notifier's HTTP session: refuses a name whose addresses are not allowed."""

    def __init__(self, entries: list[str]) -> None:
        super().__init__()
        self.entries = entries

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await super().resolve(host, port, family)
        reason = refusal(host, [r["host"] for r in found], self.entries)
        if reason:
            raise Refused(reason)
        return found
