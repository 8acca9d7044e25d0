#!/usr/bin/env bash
# Starts the example C server (examples/c/server.c) on a free loopback port and
# checks statuses and headers with curl. Usage: tests/c/test_server.sh SERVER_BINARY
set -euo pipefail
SERVER=$1
POLICY="$(dirname "$0")/../../examples/c/policy.toml"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp)
"$SERVER" "$POLICY" "$PORT" > /dev/null 2> "$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.05; done
URL="http://127.0.0.1:$PORT"
fail=0
expect() { # expect WHAT ACTUAL WANTED
  if [ "$2" != "$3" ]; then echo "FAIL: $1: got '$2', want '$3'"; fail=1; else echo "ok: $1"; fi
}
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

expect "login 1" "$(status -X POST "$URL/auth/login")" 200
expect "login 2" "$(status -X POST "$URL/auth/login")" 200
H=$(curl -s -D - -o /tmp/fg-body.$$ -X POST "$URL/auth/login" | tr -d '\r')
expect "login 3 is 429" "$(echo "$H" | head -1 | awk '{print $2}')" 429
expect "Retry-After" "$(echo "$H" | sed -n 's/^Retry-After: //p')" 30
expect "RateLimit-Policy" "$(echo "$H" | grep -c '^RateLimit-Policy: "login";q=2;w=60')" 1
expect "RateLimit" "$(echo "$H" | grep -c '^RateLimit: "login";r=0;t=60')" 1
expect "429 body" "$(cat /tmp/fg-body.$$)" '{"error":"rate_limited","retry_after":30,"rule":"login"}'
rm -f /tmp/fg-body.$$
expect "token without client id is 401" "$(status -X POST "$URL/oauth/token")" 401
expect "token with client id" "$(status -X POST -H 'x-client-id: app-1' "$URL/oauth/token")" 200
expect "revoked API key is 403" "$(status -H 'x-api-key: sk_revoked' "$URL/api/items")" 403
H=$(curl -s -D - -o /dev/null "$URL/api/items" | tr -d '\r')
expect "api allowed" "$(echo "$H" | head -1 | awk '{print $2}')" 200
expect "api remaining" "$(echo "$H" | grep -c '^RateLimit: "api";r=99;t=')" 1
expect "no rule: no headers" "$(curl -s -D - -o /dev/null "$URL/health" | grep -ci '^ratelimit')" 0
# The revoked key after 80 junk headers: every header reaches the engine.
JUNK=()
for i in $(seq 80); do JUNK+=(-H "x-junk-$i: $i"); done
expect "API key past 64 headers is still seen" "$(status "${JUNK[@]}" -H 'x-api-key: sk_revoked' "$URL/api/items")" 403
# Spellings a router sends to the login handler meet the login rule (already at 2/2).
expect "upper-case login path" "$(status -X POST "$URL/AUTH/LOGIN")" 429
expect "doubled slashes" "$(status -X POST --path-as-is "$URL//auth//login/")" 429
expect "HEAD counts under GET" "$(curl -s -o /dev/null -w '%{http_code}' -I "$URL/api/items")" 200
expect "a method token with a dash" "$(status -X M-SEARCH "$URL/api/items")" 200
# Sign-ins keyed by the body's username, however it is sent: the server reads
# the body (fg_engine_reads_body) and passes it; past 64 KiB, 413.
json() { status -X POST -H 'Content-Type: application/json' --data-binary "$1" "$URL/auth/signin"; }
expect "signin alice 1" "$(json '{"username":"alice"}')" 200
expect "signin alice 2 (a form)" "$(status -X POST --data 'username=Alice&password=x' "$URL/auth/signin")" 200
expect "signin alice 3 is 429" "$(json '{"password":"x","username":" ALICE "}')" 429
expect "signin bob" "$(json '{"username":"bob"}')" 200
expect "a username named twice is 400" "$(status -X POST --data 'username=bob&username=alice' "$URL/auth/signin")" 400
expect "a compressed body is 400" "$(status -X POST -H 'Content-Type: application/json' -H 'Content-Encoding: gzip' --data-binary 'x' "$URL/auth/signin")" 400
BIG=$(mktemp)
python3 -c 'import json; print(json.dumps({"username": "carol", "pad": "x" * 70000}))' > "$BIG"
expect "a body past 64 KiB is 413" "$(json "@$BIG")" 413
# Just under 64 KiB, the name after the padding: libmicrohttpd hands the body
# over in pieces, and the name is only counted if they are joined whole.
python3 -c 'import json; print(json.dumps({"pad": "x" * 65000, "username": "dave"}))' > "$BIG"
expect "a body in pieces, 1" "$(json "@$BIG")" 200
expect "a body in pieces, 2" "$(json "@$BIG")" 200
expect "a body in pieces, 3 is 429 (the name at its end counted)" "$(json "@$BIG")" 429
expect "no body: no key, the rule is skipped" "$(status -X POST "$URL/auth/signin")" 200
rm -f "$BIG"
# max_in_flight = 1: each export is settled when its response is sent, so
# one after another all pass (unsettled, the second would be 429).
for i in 1 2 3 4 5; do expect "export $i, one at a time" "$(status "$URL/export/report.csv")" 200; done
# Logging: 200 more denials make no line each, only the summary at exit.
for _ in $(seq 200); do curl -s -o /dev/null -X POST "$URL/auth/login"; done
kill $PID; wait $PID 2>/dev/null || true
expect "denials are summed up, not logged one by one" "$(wc -l < "$LOG" | tr -d ' ')" 1
expect "the summary counts every denial" "$(grep -c 'floodgate: last [0-9]* s: denied 20[0-9], other events [0-9]' "$LOG")" 1
rm -f "$LOG"
exit $fail
