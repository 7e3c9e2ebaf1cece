"""Client addresses: the rate-limit key of an address, and the client behind trusted proxies.

:func:`ip_key` turns a peer address into the key every per-address limit
is counted under (an IPv6 client is its ``/ipv6_prefix`` network, since one
host commonly owns a whole /64). :func:`client_ip` finds the real client
in ``X-Forwarded-For`` when, and only when, the TCP peer is a trusted proxy.
:func:`own_relay_address` finds where the other processes reach this one.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_key(host: str, ipv6_prefix: int = 64) -> str:
    """The rate-limit key of an address: IPv4 as is, IPv6 as its ``/ipv6_prefix`` network.

    IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) count as their IPv4 address.
    """
    if ":" not in host:
        return host
    try:
        addr = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    prefix = min(max(ipv6_prefix, 0), 128)
    return ipaddress.IPv6Network((int(addr) >> (128 - prefix) << (128 - prefix), prefix)).with_prefixlen


@functools.lru_cache(maxsize=64)
def parse_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Parse trusted-proxy entries (addresses or CIDRs); raise a ValueError saying which is wrong."""
    nets: list[IPNetwork] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"trusted proxy {entry!r} is not an IP address or CIDR network; "
                "use e.g. COLLAB_TRUSTED_PROXIES=10.0.0.0/8,127.0.0.1"
            ) from None
    return tuple(nets)


def parse_hop(hop: str) -> IPAddress | None:
    """One ``X-Forwarded-For`` hop (``v4``, ``v4:port``, ``v6``, ``[v6]:port``) as an address, or None."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):  # [v6]:port
        hop = hop[1:].split("]", 1)[0]
    elif hop.count(":") == 1:  # v4:port
        hop = hop.split(":", 1)[0]
    try:
        return ipaddress.ip_address(hop.split("%", 1)[0])
    except ValueError:
        return None


def in_networks(addr: IPAddress, nets: Sequence[IPNetwork]) -> bool:
    """Whether ``addr`` (an IPv4-mapped IPv6 address counts as IPv4) is in one of ``nets``."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def is_trusted(host: str, nets: Sequence[IPNetwork]) -> bool:
    """Whether the peer ``host`` is one of the trusted proxy networks ``nets``."""
    addr = parse_hop(host)
    return addr is not None and in_networks(addr, nets)


def _forwarded_for(headers: Any) -> list[str]:
    """Every X-Forwarded-For value, in order, from ASGI pairs, Starlette Headers or a dict."""
    if isinstance(headers, (list, tuple)):
        values = [v.decode("latin-1") if isinstance(v, bytes) else v
                  for k, v in headers
                  if (k.lower() if isinstance(k, str) else k.lower().decode("latin-1")) == "x-forwarded-for"]
    elif hasattr(headers, "getlist"):
        values = headers.getlist("x-forwarded-for")
    else:
        values = [v for k, v in dict(headers).items() if k.lower() == "x-forwarded-for"]
    hops: list[str] = []
    for value in values:
        hops.extend(h for h in value.split(",") if h.strip())
    return hops


def client_ip(scope_client_host: str | None, headers: Any, trusted_proxies: Iterable[str]) -> str:
    """The client's address: the TCP peer, or behind trusted proxies the X-Forwarded-For hop.

    Only when the TCP peer is a trusted proxy is X-Forwarded-For read, right
    to left, skipping trusted hops; the first untrusted hop is the client.
    A malformed hop stops the walk at the last trusted address (so a forged
    garbage value cannot mint fresh rate-limit keys). With no trusted
    proxies the header is ignored.
    """
    peer = scope_client_host or ""
    trusted = tuple(trusted_proxies)
    if not trusted or not peer:
        return peer
    nets = parse_networks(trusted)
    if not is_trusted(peer, nets):
        return peer
    last = peer
    for hop in reversed(_forwarded_for(headers)):
        addr = parse_hop(hop)
        if addr is None:
            return last
        last = str(addr)
        if not in_networks(addr, nets):
            return last
    return last


#: ``COLLAB_RELAY_ADDRESS`` with no host (``auto`` or ``auto:PORT``): see :func:`own_relay_address`.
AUTO = "auto"


def auto_port(setting: str, server_port: int) -> int | None:
    """The port of an ``auto`` relay address (``auto``: the server's), ``None`` if ``setting`` names
    its host; ``ValueError`` with what to do for a port that cannot be told."""
    if setting != AUTO and not setting.startswith(AUTO + ":"):
        return None
    port = setting[len(AUTO) + 1:] if setting != AUTO else str(server_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{setting!r}: auto takes the server's port, and {port!r} is none the others can "
                         "reach (give one: auto:8000, or a fixed PORT)")
    return int(port)


async def own_relay_address(setting: str, server_port: int, redis_url: str) -> str:
    """The relay address to record: ``setting`` when it names a host; for ``auto``, this machine's
    address on the network it reaches Redis by (the other processes reach Redis too, so they
    reach that network), with the server's port, or ``auto:PORT``'s."""
    port = auto_port(setting, server_port)
    if port is None:
        return setting
    target = urlsplit(redis_url)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(target.hostname or "localhost", target.port or 6379, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(sockaddr)  # a datagram socket's connect sends nothing: it only picks the route
        host = probe.getsockname()[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
