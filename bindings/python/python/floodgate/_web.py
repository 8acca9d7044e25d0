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
A server on a Unix socket has no peer address: ``"unix:"`` in
``trusted_proxies`` trusts the proxy in front of it (as nginx's
``set_real_ip_from unix:``); without it such requests have no client address.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Iterable, Optional, Sequence, Tuple

from ._floodgate import MAX_BODY_BYTES, TrustedProxies, is_proxy_address
from .errors import FloodgateError


def networks(trusted: Iterable[str]) -> Optional[TrustedProxies]:
    """Trusted proxy addresses or networks (``"10.0.0.0/8"``, ``"::1"``), and
    ``"unix:"`` for a proxy on a Unix socket, parsed by the core. IPv4 networks
    also match their IPv4-mapped IPv6 spelling (``::ffff:10.0.0.1``). ``None``
    for none: the middleware then tests a plain ``None`` per request (the truth
    of a ``TrustedProxies`` is a call into the extension)."""
    parsed = TrustedProxies([str(t) for t in trusted])
    return parsed if parsed else None


# The walk for a scoped peer address when no proxy is trusted.
_NO_PROXIES = TrustedProxies([])


def client_ip(
    peer: Optional[str],
    headers: Sequence[Tuple[str, str]],
    trusted: Optional[TrustedProxies],
    forwarded_header: str = "x-forwarded-for",
) -> Optional[str]:
    """The client's address: the socket peer, unless the peer is a trusted proxy;
    then the first untrusted hop, from the right, of ``forwarded_header`` (see the
    module docs; the walk is the core's ``TrustedProxies``, shared with the
    Rust front ends). A header from an untrusted peer is ignored: anyone can
    send one. A peer that is no address is a Unix-domain socket (uvicorn's
    ``--uds``, gunicorn's ``unix:`` bind): its header is read only when
    ``trusted_proxies`` lists ``"unix:"``. ``None`` when there is no client
    address (the engine then keys the request ``-`` in IP-keyed rules: one key
    for all such requests)."""
    if not peer:
        if not trusted or not trusted.unix:
            return None
        name = forwarded_header.lower()
        return trusted.client_ip(None, [value for hname, value in headers if hname.lower() == name], name)
    if not trusted and "%" not in peer:
        # The common case: no proxy to trust, so the peer is the client. The engine
        # parses (and unmaps) it; only reject what is plainly not an address
        # (e.g. Starlette's TestClient peer "testclient").
        return peer if (peer[0].isdigit() or ":" in peer) else None
    name = forwarded_header.lower()
    values = [value for hname, value in headers if hname.lower() == name]
    return (trusted or _NO_PROXIES).client_ip(peer, values, name)


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


CHECKED_REQUESTS = 1000

UNTRUSTED_PROXY = (
    "ERR_FG_UNTRUSTED_PROXY: a request from a private, loopback or Unix-socket peer (%s) carried %s, but "
    "trusted_proxies does not trust that peer: every client behind that proxy is its address (on a Unix socket, "
    "the one client '-'), and they share each IP-keyed limit. List the proxy (or \"unix:\") in trusted_proxies."
)


def _from_proxy(peer: Optional[str]) -> bool:
    """Whether a peer is where a reverse proxy sits: no address (a Unix socket),
    or a loopback or private address."""
    if not peer:
        return True
    # Loopback, private, link-local or CGNAT (the core's list; a zone id cut).
    return is_proxy_address(peer.split("%", 1)[0])


class ProxyCheck:
    """Warns once, on the ``floodgate`` logger, when one of the first
    ``CHECKED_REQUESTS`` requests comes from a proxy's place (a private,
    loopback or Unix-socket peer) with the forwarding header, and that peer is
    not trusted: every client is then the proxy (one limit for all of them).
    ``left`` is 0 once done or when ``validate`` is false; a middleware tests
    it before calling."""

    def __init__(self, trusted: Optional[TrustedProxies], forwarded_header: str, validate: bool = True) -> None:
        self.left = CHECKED_REQUESTS if validate else 0
        self.trusted = trusted
        self.header = forwarded_header

    def __call__(self, peer: Optional[str], forwarded: bool) -> None:
        self.left -= 1
        if forwarded and _from_proxy(peer) and not (self.trusted is not None and self.trusted.trusts(peer or None)):
            self.left = 0
            logging.getLogger("floodgate").warning(
                UNTRUSTED_PROXY, peer or "a Unix socket", self.header, extra={"floodgate_event": "untrusted_proxy"}
            )


def settle_quietly(engine: Any, verdict: Any, status: int, cost: Optional[float] = None) -> None:
    """``engine.settle`` for a middleware: a verdict the app already settled,
    or a store that is down, leaves the charge as it stands."""
    try:
        engine.settle(verdict, status=status, cost=cost)
    except FloodgateError:
        pass


async def settle_quietly_async(engine: Any, verdict: Any, status: int, cost: Optional[float] = None) -> None:
    """``settle_quietly`` on an event loop: on Redis (``engine.blocking``) with
    ``settle_async``, so no thread waits for the round trips."""
    if not engine.blocking:
        return settle_quietly(engine, verdict, status, cost)
    try:
        await engine.settle_async(verdict, status=status, cost=cost)
    except FloodgateError:
        pass


# Bodies, for rules keyed by a body field (``key = "body:username"``): read
# only for the requests such a rule meets (``engine.reads_body``), whole, and
# given back to the app to read again. A body over ``MAX_BODY_BYTES`` is
# answered 413 (``TOO_LARGE_BODY``) rather than checked on a part: a field past
# the part read would slip by the rule.


def reads_bodies(engine: Any) -> bool:
    """Whether ``engine`` may ever ask for a body: a policy keyed by a body
    field reads the content type, and a reload cannot add a header to read."""
    return "content-type" in engine.request_headers


def read_wsgi_body(environ: dict) -> Optional[bytes]:
    """The whole body of a WSGI request, with ``wsgi.input`` replaced by a copy
    the app reads again; ``None`` if it is longer than ``MAX_BODY_BYTES`` (then
    nothing was read). A body without a length is read only where the server
    marks its end (``wsgi.input_terminated``, gunicorn's chunked bodies)."""
    stream = environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH")
    try:
        n = int(length) if length else None
    except ValueError:
        n = None
    if stream is None or n == 0 or (n is None and not environ.get("wsgi.input_terminated")):
        return b""
    if n is not None and n > MAX_BODY_BYTES:
        return None
    data = stream.read(n if n is not None else MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        return None
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    return data


async def read_asgi_body(receive: Any) -> Tuple[Optional[bytes], Any]:
    """The whole body of an ASGI request (``None`` if longer than
    ``MAX_BODY_BYTES``), and a ``receive`` that gives it to the app again
    (then whatever the server sends next, such as the disconnect)."""
    chunks = []
    size = 0
    pending = None
    while True:
        message = await receive()
        if message["type"] != "http.request":
            pending = message  # the client left: the app hears it after the body
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None, receive
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Any:
        nonlocal replayed, pending
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return body, replay
