#!/usr/bin/env bash
# Throughput of nginx with the Floodgate module against the same nginx without
# it, in one run: 2 workers (one per core), a static file, wrk on loopback,
# alternating locations (`floodgate off` and a generous per-IP shared-memory
# rule, so nothing is denied). Prints the median of 3 runs of each.
#
#   benches/nginx/run.sh [SECONDS]      (needs nginx, nginx-dev, wrk)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SECS=${1:-5}
cargo build -q --release -p floodgate-ffi --manifest-path "$ROOT/Cargo.toml"
MODULE=$(FLOODGATE_LIB="$ROOT/target/release" "$ROOT/integrations/nginx/build.sh" "$ROOT/target/nginx-release")
WORK=$(mktemp -d)
chmod 755 "$WORK"
mkdir -p "$WORK/www/api"
echo ok > "$WORK/www/api/items"
mkdir -p "$WORK/www/open" && echo ok > "$WORK/www/open/items"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$WORK/policy.toml" <<POLICY
[store]
kind = "shared_memory"
path = "/dev/shm/fg-nginx-bench-$$"
max_keys = 4096

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
quotas = ["100000000/s"]
POLICY
cat > "$WORK/nginx.conf" <<CONF
load_module $MODULE;
worker_processes 2;
daemon off;
error_log $WORK/error.log warn;
pid $WORK/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fastcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  floodgate_policy $WORK/policy.toml;
  server {
    listen 127.0.0.1:$PORT;
    root $WORK/www;
    location /open/ { floodgate off; }
  }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK" &
NGINX=$!
trap 'kill -QUIT $NGINX 2>/dev/null; wait $NGINX 2>/dev/null; rm -rf "$WORK" /dev/shm/fg-nginx-bench-$$' EXIT
sleep 1
rate() { wrk -t 1 -c 32 -d "${SECS}s" "http://127.0.0.1:$PORT$1" | awk '/Requests\/sec/ {print $2}'; }
declare -a OFF ON
for i in 1 2 3; do
  OFF+=("$(rate /open/items)")
  ON+=("$(rate /api/items)")
done
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
off=$(median "${OFF[@]}"); on=$(median "${ON[@]}")
echo "without the module (floodgate off): ${OFF[*]} req/s, median $off"
echo "with the module (one rule, allowed): ${ON[*]} req/s, median $on"
python3 -c "print(f'ratio: {float($on) / float($off):.3f}x')"
