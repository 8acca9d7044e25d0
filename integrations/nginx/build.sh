#!/usr/bin/env bash
# Builds ngx_http_floodgate_module.so against Debian's nginx-dev (the headers and
# configure script of the packaged nginx), with Debian's configure flags, so the
# module's signature matches the packaged binary and `load_module` accepts it.
#
#   integrations/nginx/build.sh [OUT_DIR]     (default target/nginx)
#
# Needs: nginx-dev, libpcre2-dev, libssl-dev, zlib1g-dev (configure checks what
# Debian's flags enable) and libfloodgate (FLOODGATE_LIB, default target/debug).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/target/nginx}" && cd "${1:-$ROOT/target/nginx}" && pwd)
LIB=${FLOODGATE_LIB:-$ROOT/target/debug}
[ -e "$LIB/libfloodgate.so" ] || { echo "no $LIB/libfloodgate.so: cargo build -p floodgate-ffi" >&2; exit 1; }
# The library's SONAME is libfloodgate.so.0 (what the module will look for).
ln -sf libfloodgate.so "$LIB/libfloodgate.so.0"
rm -rf "$OUT/src"
cp -r /usr/share/nginx/src "$OUT/src"
cd "$OUT/src"
# shellcheck disable=SC1091
source ./conf_flags
FLOODGATE_INC="$ROOT/include" FLOODGATE_LIB="$LIB" ./configure "${NGX_CONF_FLAGS[@]}" \
  --with-cc-opt="-g -O2 -Wall -Werror -fPIC" \
  --add-dynamic-module="$ROOT/integrations/nginx" > "$OUT/configure.log" 2>&1 \
  || { tail -30 "$OUT/configure.log" >&2; exit 1; }
make -s -f objs/Makefile modules > "$OUT/make.log" 2>&1 || { tail -40 "$OUT/make.log" >&2; exit 1; }
cp objs/ngx_http_floodgate_module.so "$OUT/"
echo "$OUT/ngx_http_floodgate_module.so"
