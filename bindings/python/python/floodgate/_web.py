"""What the middlewares share: the client's address and the path the router uses.
The bodies of denials come from the core (``verdict.body``, ``BAD_REQUEST_BODY``),
the same from every front end.

Trusted proxies. The socket peer is the client, unless the peer is one of
``trusted_proxies``. Then exactly one forwarding header is read, the one the
proxy sets (``forwarded_header``, default ``X-Forwarded-For``; ``Forwarded``
for RFC 7239 ``for=``), never another: a proxy that only appends to
``X-Forwarded-For`` passes a client's own ``Forwarded`` header through
untouched. Every copy of that header is read in order, the hops are walked from
the right skipping trusted proxies, and the first untrusted hop is the client.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def networks(trusted: Iterable[str]) -> List[Network]:
    """Parses trusted proxy addresses or networks (``"10.0.0.0/8"``, ``"::1"``).
    IPv4 networks also match their IPv4-mapped IPv6 spelling (``::ffff:10.0.0.1``)."""
    return [ipaddress.ip_network(t, strict=False) for t in trusted]


def _canonical(addr: Address) -> Address:
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.scope_id is not None:
            return ipaddress.IPv6Address(str(addr).split("%", 1)[0])
    return addr


def _ip(text: str) -> Optional[Address]:
    """An address as peers and forwarding headers write it: ``203.0.113.7``,
    ``203.0.113.7:443``, ``[2001:db8::1]:443``, ``fe80::1%eth0``,
    ``::ffff:192.0.2.5``; ``None`` if it is none of these."""
    text = text.strip().strip('"')
    if text.startswith("["):  # [2001:db8::1]:443
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # 203.0.113.7:443
        text = text.split(":", 1)[0]
    try:
        return _canonical(ipaddress.ip_address(text))
    except ValueError:
        pass
    if "%" in text:  # a zone id the ipaddress module refuses
        try:
            return _canonical(ipaddress.ip_address(text.split("%", 1)[0]))
        except ValueError:
            return None
    return None


def _opaque(hop: str) -> str:
    """A hop that names no address (``for=unknown``, an obfuscated ``for=_node``, or
    text a trusted proxy wrote): a stable address of its own in the reserved
    ``100::/8`` block (never a real client), derived from the text, so such clients
    are neither unlimited nor folded onto the proxy's address."""
    digest = hashlib.blake2b(hop.strip().strip('"').lower().encode(), digest_size=7).digest()
    return str(ipaddress.IPv6Address(b"\x01" + digest + bytes(8)))


def _trusted(addr: Address, trusted: Sequence[Network]) -> bool:
    return any(addr in n for n in trusted)


def client_ip(
    peer: Optional[str],
    headers: Sequence[Tuple[str, str]],
    trusted: Sequence[Network],
    forwarded_header: str = "x-forwarded-for",
) -> Optional[str]:
    """The client's address: the socket peer, unless the peer is a trusted proxy;
    then the first untrusted hop, from the right, of ``forwarded_header`` (see the
    module docs). A header from an untrusted peer is ignored: anyone can send one."""
    if not peer:
        return None
    if not trusted and "%" not in peer:
        # The common case: no proxy to trust, so the peer is the client. The engine
        # parses (and unmaps) it; only reject what is plainly not an address
        # (e.g. Starlette's TestClient peer "testclient").
        return peer if (peer[0].isdigit() or ":" in peer) else None
    addr = _ip(peer)
    if addr is None:
        return None
    if not _trusted(addr, trusted):
        return str(addr)
    name = forwarded_header.lower()
    chain: List[str] = []
    for hname, value in headers:
        if hname.lower() != name:
            continue
        if name == "forwarded":
            for element in value.split(","):
                for pair in element.split(";"):
                    k, _, v = pair.strip().partition("=")
                    if k.strip().lower() == "for":
                        chain.append(v)
        else:
            chain.extend(value.split(","))
    for hop in reversed(chain):
        ip = _ip(hop)
        if ip is None:
            return _opaque(hop)
        if not _trusted(ip, trusted):
            return str(ip)
    return str(addr)


def router_path(path: str, query: str = "") -> str:
    """A decoded path (what Starlette, Flask and Django route on) as a target the
    engine decodes back to exactly that path: ``%``, ``?`` and ``#`` are escaped,
    so a ``%3F`` sent by the client stays part of the path, and nothing is decoded
    twice."""
    if "%" in path or "?" in path or "#" in path:
        path = path.replace("%", "%25").replace("?", "%3F").replace("#", "%23")
    return path + "?" + query if query else path


def wanted_headers(engine: Any, forwarded_header: str) -> Tuple[str, ...]:
    """The request headers a middleware reads: those the policy reads
    (``engine.request_headers``) and the forwarding header, lower case. Reading
    only these costs a few string conversions per request instead of one per
    header sent."""
    names = [h.lower() for h in engine.request_headers]
    fwd = forwarded_header.lower()
    if fwd not in names:
        names.append(fwd)
    return tuple(names)


def environ_keys(names: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """(WSGI environ key, header name) for each header name: ``x-api-key`` is
    ``HTTP_X_API_KEY`` (``content-type`` and ``content-length`` have no prefix)."""
    out = []
    for name in names:
        key = name.upper().replace("-", "_")
        out.append((key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key, name))
    return tuple(out)


#: The response header a handler sets to report its request's real cost, for
#: rules with ``cost_from = "response"`` (e.g. ``Floodgate-Cost: 37`` for a
#: GraphQL query's cost or an LLM call's tokens). The middleware reads it and
#: removes it from the response, so clients never see it.
COST_HEADER = "floodgate-cost"


def parse_cost(value: Union[str, bytes, None]) -> Optional[float]:
    """The cost a handler reported, or ``None`` (absent or not a whole number
    of units: the estimate stands)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    return float(value) if value.isdigit() else None
