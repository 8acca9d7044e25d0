"""What the middlewares share: the client's address and the denial body."""

from __future__ import annotations

import ipaddress
import json
import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from ._floodgate import Verdict

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def networks(trusted: Iterable[str]) -> List[Network]:
    """Parses trusted proxy addresses or networks (``"10.0.0.0/8"``, ``"::1"``)."""
    return [ipaddress.ip_network(t, strict=False) for t in trusted]


def _ip(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    text = text.strip().strip('"')
    if text.startswith("["):  # [2001:db8::1]:443
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # 203.0.113.7:443
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def client_ip(peer: Optional[str], headers: Sequence[Tuple[str, str]], trusted: Sequence[Network]) -> Optional[str]:
    """The client's address: the socket peer, unless the peer is a trusted proxy.

    Then the forwarded chain (``Forwarded: for=``, else ``X-Forwarded-For``) is read
    from the right, skipping trusted proxies; the first untrusted address is the
    client. A header from an untrusted peer is ignored: anyone can send one.
    """
    if not peer:
        return None
    if not trusted:
        # The common case: no proxy to trust, so the peer is the client. The engine
        # parses it; only reject what is plainly not an address (e.g. "testclient").
        return peer if (peer[0].isdigit() or ":" in peer) else None
    addr = _ip(peer)
    if addr is None:
        return None
    if not any(addr in n for n in trusted):
        return str(addr)
    chain: List[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname == "forwarded":
            for element in value.split(","):
                for pair in element.split(";"):
                    k, _, v = pair.strip().partition("=")
                    if k.lower() == "for":
                        chain.append(v)
    if not chain:
        for name, value in headers:
            if name.lower() == "x-forwarded-for":
                chain.extend(value.split(","))
    for hop in reversed(chain):
        ip = _ip(hop)
        if ip is None:
            return str(addr)  # garbage in the chain: trust nothing beyond the peer
        if not any(ip in n for n in trusted):
            return str(ip)
    return str(addr)


def denial_body(verdict: Verdict) -> bytes:
    """The small JSON body of a 429, 403 or 401."""
    if verdict.status == 429:
        body = {"error": "rate_limited", "retry_after": math.ceil(verdict.retry_after), "rule": verdict.rule}
    elif verdict.status == 401:
        body = {"error": "unauthorized", "rule": verdict.rule}
    else:
        body = {"error": "forbidden"}
    return json.dumps(body).encode()
