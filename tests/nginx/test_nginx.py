#!/usr/bin/env python3
"""The nginx module in a real nginx: 4 worker processes on a loopback port, one
shared-memory policy, hit by real clients (many connections at once, so every
worker answers). Usage: tests/nginx/test_nginx.py MODULE.so [--valgrind]

Checks: `nginx -t` refuses a bad policy with its located error; exact 200/429
counts across the 4 workers; the headers and JSON body of a denial and the
headers of an allowed response; JWT-keyed limits with tokens signed here (and
alg=none refused); failed requests only counted (settled in the log phase);
places in flight and the real cost from a slow upstream's Floodgate-Cost header
(removed before the client); 100 KB of headers and garbage bytes in the URI get
answers, and no worker dies; nginx on a Unix socket (no peer address: one
client, never a 400; with realip from `unix:`, each client). With --valgrind: nginx in one process under
valgrind for a run of the same requests, zero errors.
"""
import base64
import gzip
import hashlib
import hmac
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

MODULE = os.path.abspath(sys.argv[1])
VALGRIND = "--valgrind" in sys.argv
FAILED = []


def expect(what, got, want):
    if got == want:
        print(f"ok: {what}")
    else:
        print(f"FAIL: {what}: got {got!r}, want {want!r}")
        FAILED.append(what)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(sub, secret=b"test-secret-of-32-bytes-at-least!", alg="HS256"):
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 3600, "aud": "api"}).encode())
    signing = f"{header}.{claims}".encode()
    sig = b64(hmac.new(secret, signing, hashlib.sha256).digest()) if alg == "HS256" else ""
    return f"{header}.{claims}.{sig}"


class Upstream(http.server.BaseHTTPRequestHandler):
    """A slow backend: /slow waits 600 ms; /cost reports a real cost of 40."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(0.6)
        body = b"upstream\n"
        self.send_response(200)
        if self.path.startswith("/cost"):
            self.send_header("Floodgate-Cost", "40")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        """Echoes the username it was sent (JSON or a form) and the body's size:
        the body a rule keyed on still reaches the upstream, whole. A gzip
        body is inflated first, as Express's body parsers do."""
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        if "json" in self.headers.get("Content-Type", ""):
            username = json.loads(data).get("username")
        else:
            username = urllib.parse.parse_qs(data.decode()).get("username", [None])[0]
        body = json.dumps({"username": username, "bytes": len(data)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def request(port, path, headers=None, method="GET", body=None, chunked=False):
    """(status, headers dict lower-case, body, worker pid) over a new connection;
    a body is sent with its length, or chunked (in 1 KB chunks)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if chunked:
            data = body
            body = (data[i:i + 1024] for i in range(0, len(data), 1024))
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        res = conn.getresponse()
        body = res.read().decode(errors="replace")
        hdrs = {k.lower(): v for k, v in res.getheaders()}
        return res.status, hdrs, body, hdrs.get("x-worker")
    finally:
        conn.close()


def keep_alive(port, paths):
    """[(status, headers dict lower-case)] for GETs of paths on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        replies = []
        for path in paths:
            conn.request("GET", path)
            res = conn.getresponse()
            res.read()
            replies.append((res.status, {k.lower(): v for k, v in res.getheaders()}))
        return replies
    finally:
        conn.close()


def raw(port, data):
    """Sends raw bytes; the status line's code, or 0 if the connection closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        reply = b""
        try:
            while b"\r\n" not in reply:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def main():
    work = tempfile.mkdtemp(prefix="fg-nginx-")
    os.chmod(work, 0o755)
    shm = f"/dev/shm/fg-nginx-test-{os.getpid()}"
    www = os.path.join(work, "www")
    for d in ("api", "user", "login"):
        os.makedirs(os.path.join(www, d))
    for f in ("api/items", "user/me", "login/ok", "open"):
        with open(os.path.join(www, f), "w") as fh:
            fh.write("ok\n")
    secret = os.path.join(work, "jwt.secret")
    with open(secret, "wb") as fh:
        fh.write(b"test-secret-of-32-bytes-at-least!")
    upstream = ThreadingServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up_port = upstream.server_address[1]

    policy = os.path.join(work, "policy.toml")
    with open(policy, "w") as fh:
        fh.write(f"""
[store]
kind = "shared_memory"
path = "{shm}"
max_keys = 8192

[jwt]
algorithms = ["HS256"]
audience = "api"
secret_file = "{secret}"

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
algorithm = "fixed_window"
quotas = ["50/hour"]

[[rule]]
name = "user"
match = "/user/**"
key = "claim:sub"
algorithm = "fixed_window"
quotas = ["5/hour"]
anonymous = "deny"

[[rule]]
name = "login"
match = "/login/**"
key = "ip"
algorithm = "fixed_window"
quotas = ["3/hour"]
count = "failures"
failure_status = "404"

[[rule]]
name = "slow"
match = "/slow"
key = "ip"
quotas = ["1000/s"]
max_in_flight = 2

[[rule]]
name = "login-user"
match = "POST /signin"
key = "body:username"
algorithm = "fixed_window"
quotas = ["3/hour"]

[[rule]]
name = "cost"
match = "/cost"
key = "ip"
algorithm = "fixed_window"
quotas = ["100/hour"]
cost = 10
cost_from = "response"
""")
    port = free_port()
    workers = 1 if VALGRIND else 4
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as fh:
        fh.write(f"""
load_module {MODULE};
worker_processes {workers};
master_process {"off" if VALGRIND else "on"};
daemon off;
error_log {work}/error.log info;
pid {work}/nginx.pid;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  floodgate_policy {policy};
  add_header X-Worker $pid always;
  server {{
    listen 127.0.0.1:{port};
    root {www};
    location = /slow {{ proxy_pass http://127.0.0.1:{up_port}; }}
    location = /cost {{ proxy_pass http://127.0.0.1:{up_port}; }}
    location = /signin {{ proxy_pass http://127.0.0.1:{up_port}; }}
    location /open {{ floodgate off; }}
  }}
  # Behind another proxy on a Unix socket: no peer address, so one client `-`
  # (not a 400 for "unix:"); with realip trusting the socket, the header's.
  server {{
    listen unix:{work}/plain.sock;
    root {www};
  }}
  server {{
    listen unix:{work}/realip.sock;
    root {www};
    set_real_ip_from unix:;
    real_ip_header X-Forwarded-For;
  }}
}}
""")

    # A bad policy fails `nginx -t` with the policy's located error.
    bad = os.path.join(work, "bad.toml")
    with open(bad, "w") as fh:
        fh.write('[[rule]]\nname = "x"\nmatch = "/**"\nkey = "ip"\nquotas = ["ten per minute"]\n')
    bad_conf = os.path.join(work, "bad.conf")
    with open(conf) as src, open(bad_conf, "w") as dst:
        dst.write(src.read().replace(f"floodgate_policy {policy};", f"floodgate_policy {bad};"))
    t = subprocess.run(["nginx", "-t", "-c", bad_conf, "-p", work], capture_output=True, text=True)
    expect("nginx -t refuses a bad policy", t.returncode != 0, True)
    expect("the error names the policy and the line", "bad.toml" in t.stderr and "line 5" in t.stderr, True)
    t = subprocess.run(["nginx", "-t", "-c", conf, "-p", work], capture_output=True, text=True)
    expect("nginx -t accepts the policy", t.returncode, 0)

    cmd = ["nginx", "-c", conf, "-p", work]
    if VALGRIND:
        cmd = ["valgrind", "-q", "--error-exitcode=3", "--log-file=" + os.path.join(work, "valgrind.log")] + cmd
    server = subprocess.Popen(cmd)
    try:
        for _ in range(600 if VALGRIND else 100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        run_checks(port, workers)
        unix_checks(work)
        if os.environ.get("FG_TEST_REDIS_URL") and not VALGRIND:
            redis_run(work, conf, policy)
    finally:
        code = quit_nginx(server)
        upstream.shutdown()
        log = open(os.path.join(work, "error.log"), errors="replace").read()
        expect("no worker died", [l for l in log.splitlines() if "exited on signal" in l], [])
        if VALGRIND:
            path = os.path.join(work, "valgrind.log")
            expect("nginx ran under valgrind", os.path.exists(path), True)
            vg = open(path, errors="replace").read() if os.path.exists(path) else "?"
            expect("valgrind: no errors", (code, vg.strip()), (0, ""))
        if FAILED:
            print(log[-3000:])
        shutil.rmtree(work, ignore_errors=True)
        try:
            os.unlink(shm)
        except OSError:
            pass


def quit_nginx(server):
    """Stops nginx gracefully (SIGQUIT); its exit code, or -1 if it had to be
    killed after 60 s. The signal is sent again every 2 s: nginx in one process
    (`master_process off`, the valgrind run) can take a signal just before it
    blocks in epoll_wait with no timer left, and then waits there for an event
    that never comes (seen under valgrind on a busy machine, about one run in
    fifteen: the process in `do_epoll_wait` with an infinite timeout after
    logging the signal; a second signal ends it)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        server.send_signal(signal.SIGQUIT)
        try:
            return server.wait(timeout=2)
        except subprocess.TimeoutExpired:
            continue
    server.kill()
    server.wait()
    return -1


def multipart_login(params, username="Victim"):
    """A login as multipart/form-data, the username's part named by `params`."""
    return ("--XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nx\r\n"
            f"--XyZ\r\nContent-Disposition: form-data; {params}\r\n\r\n{username}\r\n--XyZ--\r\n").encode()


def wait_for(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


def redis_run(work, conf, policy):
    """The same nginx on a Redis policy: its engine cannot survive fork(), so
    each of the 4 workers builds its own (init_process); the limit is exact
    across them because Redis holds it."""
    prefix = f"fg-nginx-{os.getpid()}-{int(time.time())}"
    redis_policy = os.path.join(work, "redis.toml")
    with open(redis_policy, "w") as fh:
        fh.write(f"""
[store]
kind = "redis"
url = "{os.environ['FG_TEST_REDIS_URL']}"
prefix = "{prefix}"
timeout_ms = 500
fail_mode = "open"

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
algorithm = "fixed_window"
quotas = ["50/hour"]
""")
    port = free_port()
    redis_conf = os.path.join(work, "redis.conf")
    with open(conf) as src, open(redis_conf, "w") as dst:
        text = src.read()
        text = text.replace(f"floodgate_policy {policy};", f"floodgate_policy {redis_policy};")
        text = text.replace("listen 127.0.0.1:", f"listen 127.0.0.1:{port}; #")
        text = text.replace(".sock;", "-redis.sock;")
        text = text.replace("nginx.pid", "nginx-redis.pid").replace("error.log", "error-redis.log")
        dst.write(text)
    server = subprocess.Popen(["nginx", "-c", redis_conf, "-p", work])
    try:
        wait_for(port)
        with ThreadPoolExecutor(max_workers=40) as pool:
            replies = list(pool.map(lambda _: request(port, "/api/items"), range(80)))
        statuses = [r[0] for r in replies]
        # fail_mode = "open" would admit all 80: the limit held in Redis.
        expect("Redis: exactly the limit across workers", (statuses.count(200), statuses.count(429)), (50, 30))
        expect("Redis: answered by several workers", len({r[3] for r in replies}) >= 2, True)
    finally:
        quit_nginx(server)
    log = open(os.path.join(work, "error-redis.log"), errors="replace").read()
    expect("Redis: no worker died", [l for l in log.splitlines() if "exited on signal" in l], [])


def unix_status(path, target, headers=()):
    """The status of a GET sent as raw bytes over the Unix socket at `path`."""
    lines = [f"GET {target} HTTP/1.1", "Host: app", "Connection: close", *[f"{n}: {v}" for n, v in headers]]
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def unix_checks(work):
    """nginx listening on a Unix socket: `$remote_addr` is "unix:", no address."""
    plain = [unix_status(f"{work}/plain.sock", "/api/items", [("X-Forwarded-For", f"198.51.100.{i}")]) for i in range(52)]
    expect("a Unix socket: one client '-', limited (not 400)", (plain.count(200), plain.count(429)), (50, 2))
    realip = os.path.join(work, "realip.sock")
    one = [unix_status(realip, "/api/items", [("X-Forwarded-For", f"203.0.113.{i}, 198.51.100.77")]) for i in range(51)]
    expect("realip from unix: each client its own limit", (one.count(200), one.count(429)), (50, 1))
    expect("realip from unix: another client", unix_status(realip, "/api/items", [("X-Forwarded-For", "198.51.100.78")]), 200)


def run_checks(port, workers):
    # Exact across the workers: 80 requests at once, each on its own connection.
    with ThreadPoolExecutor(max_workers=40) as pool:
        replies = list(pool.map(lambda _: request(port, "/api/items"), range(80)))
    statuses = [r[0] for r in replies]
    expect("exactly the limit admitted across workers", (statuses.count(200), statuses.count(429)), (50, 30))
    seen = {r[3] for r in replies}
    expect(f"answered by several of the {workers} workers", len(seen) >= min(2, workers), True)

    status, hdrs, body, _ = request(port, "/api/items")
    expect("denied: 429", status, 429)
    expect("denied: JSON body", json.loads(body)["error"], "rate_limited")
    expect("denied: content type", hdrs.get("content-type"), "application/json")
    expect("denied: Retry-After", hdrs.get("retry-after", "").isdigit(), True)
    expect("denied: RateLimit-Policy", hdrs.get("ratelimit-policy", "").startswith('"api";q=50'), True)

    # JWT-keyed: each subject its own 5, whatever the address; unsigned tokens refused.
    alice = {"Authorization": "Bearer " + token("alice")}
    codes = [request(port, "/user/me", alice)[0] for _ in range(6)]
    expect("alice: 5 then 429", codes, [200] * 5 + [429])
    status, hdrs, _, _ = request(port, "/user/me", {"Authorization": "Bearer " + token("bob")})
    expect("bob has his own quota", status, 200)
    expect("allowed: RateLimit header", '"user";r=4;' in hdrs.get("ratelimit", ""), True)
    forged = {"Authorization": "Bearer " + token("alice", alg="none")}
    expect("alg=none is no identity: 401", request(port, "/user/me", forged)[0], 401)
    wrong = {"Authorization": "Bearer " + token("carol", secret=b"another-secret-of-32-bytes-long!!")}
    expect("a forged signature: 401", request(port, "/user/me", wrong)[0], 401)

    # Failures only (404 here): successes are given back in the log phase.
    # (On one keep-alive connection: see the real cost below.)
    codes = [status for status, _ in keep_alive(port, ["/login/ok"] * 10)]
    expect("successful logins never run out", codes, [200] * 10)
    codes = [request(port, "/login/wrong")[0] for _ in range(5)]
    expect("three failures, then 429", codes, [404, 404, 404, 429, 429])

    # Places in flight, held until the slow upstream answers.
    with ThreadPoolExecutor(max_workers=6) as pool:
        slow = sorted(pool.map(lambda _: request(port, "/slow")[0], range(6)))
    expect("6 at once, 2 places", slow, [200, 200, 429, 429, 429, 429])
    # Places are given back in the log phase, which may still be running in
    # another worker when the client has its answers: wait for it, up to 5 s.
    deadline = time.monotonic() + 5
    while (status := request(port, "/slow")[0]) == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    expect("places come back once settled", status, 200)

    # The real cost from the upstream's header, which the client never sees.
    # The settlement runs in the log phase, after the response has left: on a
    # new connection (maybe another worker) the next request can arrive first.
    # One keep-alive connection is deterministic: nginx runs the log phase of a
    # request before it reads the next one from the same connection.
    seen = [hdrs for _, hdrs in keep_alive(port, ["/cost"] * 2)]
    expect("cost header removed", "floodgate-cost" in seen[0], False)
    expect("estimate charged on arrival", '"cost";r=90;' in seen[0].get("ratelimit", ""), True)
    expect("the real cost (40) was settled", '"cost";r=50;' in seen[1].get("ratelimit", ""), True)

    # Credential stuffing: the username is in the body, spelled as logins
    # compare names, as JSON or a form, with a length or chunked, one past
    # client_body_buffer_size (nginx's temporary file). The upstream still gets
    # each body whole.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    as_json = {"Content-Type": "application/json"}
    multipart = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    padded = json.dumps({"username": " VICTIM ", "pad": "x" * 40_000}).encode()
    attempts = [
        (as_json, b'{"username":"victim","password":"123456"}', False),
        (form, b"password=x&username=Victim", True),
        (as_json, padded, False),
        (form, b"username=%20victim%20", False),
        (as_json, b'{"username":"vict\\u0069m"}', True),
    ]
    replies = [request(port, "/signin", h, "POST", b, c) for h, b, c in attempts]
    expect("a username's 3 attempts, however sent", [r[0] for r in replies], [200, 200, 200, 429, 429])
    echoed = [json.loads(r[2]) for r in replies[:3]]
    expect("the upstream got each body whole",
           [(e["username"].strip().lower(), e["bytes"]) for e in echoed],
           [("victim", len(a[1])) for a in attempts[:3]])
    expect("the denial names the user", json.loads(replies[3][2]).get("rule"), "login-user")
    expect("another name has its own", request(port, "/signin", form, "POST", b"username=alice")[0], 200)
    for what, h, b in [("named twice", form, b"username=decoy&username=victim"),
                       ("a NoSQL operator", as_json, b'{"username":{"$ne":null}}'),
                       ("a list", as_json, b'{"username":["victim"]}'),
                       ("in UTF-16 JSON", as_json, '{"username":"victim"}'.encode("utf-16-le")),
                       ("named the RFC 2231 way", multipart, multipart_login("name*=utf-8''username")),
                       # What a Python upstream reads and the engine cannot:
                       # NaN beside the name, a boundary given twice, a
                       # comment after a part's name.
                       ("beside a NaN", as_json, b'{"username":"victim","password":NaN}'),
                       ("under a second boundary", {"Content-Type": "multipart/form-data; boundary=XyZ; boundary=ABC"},
                        multipart_login('name="username"').replace(b"XyZ", b"ABC")),
                       ("with a comment", multipart, multipart_login('name="username" (the login)')),
                       # gzip, which this upstream inflates (as Express does).
                       ("compressed", {**as_json, "Content-Encoding": "gzip"}, gzip.compress(b'{"username":"victim"}'))]:
        expect(f"a username {what}: 400", request(port, "/signin", h, "POST", b)[0], 400)
    # JSON sent as a form (an upstream may read JSON whatever the type says):
    # the same name, held.
    expect("a username in JSON sent as a form: 429",
           request(port, "/signin", form, "POST", b'{"username":"victim"}')[0], 429)
    # As multipart/form-data (fetch's FormData): the same name, held.
    status = request(port, "/signin", multipart, "POST", multipart_login('name="username"'))[0]
    expect("a username in a multipart body: 429", status, 429)
    big = json.dumps({"username": "victim", "pad": "x" * 70_000}).encode()
    for chunked in (False, True):
        status, _, text, _ = request(port, "/signin", as_json, "POST", big, chunked)
        expect(f"a body past 64 KiB ({'chunked' if chunked else 'with a length'}): 413",
               (status, text), (413, '{"error":"payload_too_large"}'))
    expect("no body: the rule has no key, skipped", request(port, "/signin", method="POST")[0], 200)

    # Off, and hostile input.
    expect("floodgate off: no headers", "ratelimit" in request(port, "/open")[1], False)
    big = b"GET /api/items HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Junk-%d: %s\r\n" % (i, b"a" * 1000) for i in range(100)) + b"\r\n"
    expect("100 KB of headers: an answer", raw(port, big) in (400, 431, 494, 429), True)
    garbage = b"GET /api/\xff\xfe%00%ff/../..%2f?\x01 HTTP/1.1\r\nHost: x\r\n\r\n"
    expect("garbage in the URI: an answer", raw(port, garbage) in (400, 404, 429), True)
    odd = b"GET /api/items HTTP/1.1\r\nHost: x\r\nX-Api-Key: \xff\xfe\r\nAuthorization: Bearer \xff.\x00.x\r\n\r\n"
    expect("non-UTF-8 headers: an answer", raw(port, odd) in (400, 429), True)
    expect("still serving", request(port, "/open")[0], 200)


if __name__ == "__main__":
    main()
    sys.exit(1 if FAILED else 0)
