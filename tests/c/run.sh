#!/usr/bin/env bash
# The C side of the C ABI tests, called by scripts/test after `cargo test
# --workspace` (which checked that include/floodgate.h and tests/c/vectors.h are
# fresh). Builds the harness against the shared and the static library, runs it,
# runs it under AddressSanitizer+UBSan and valgrind, then installs the library
# into a temporary prefix, builds the example server with pkg-config and tests it
# with curl. FG_TEST_REDIS_URL, if set, is used for the Redis engine.
set -euo pipefail
cd "$(dirname "$0")/../.."
CFLAGS="-std=c11 -Wall -Wextra -Werror -Iinclude -Itests/c"
OUT=target/c
mkdir -p "$OUT"
cargo build -q -p floodgate-ffi
LIB=$PWD/target/debug
# The library's SONAME is libfloodgate.so.0 (what the binaries will look for).
ln -sf libfloodgate.so "$LIB/libfloodgate.so.0"
STATIC_LIBS=$(scripts/native-static-libs)

echo "-- harness, shared library"
gcc $CFLAGS tests/c/test_floodgate.c -L"$LIB" -lfloodgate -Wl,-rpath,"$LIB" -lpthread -o $OUT/test_shared
$OUT/test_shared
echo "-- harness, static library"
gcc $CFLAGS tests/c/test_floodgate.c "$LIB/libfloodgate.a" $STATIC_LIBS -o $OUT/test_static
$OUT/test_static
echo "-- harness under AddressSanitizer and UBSan"
gcc $CFLAGS -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all \
  tests/c/test_floodgate.c -L"$LIB" -lfloodgate -Wl,-rpath,"$LIB" -lpthread -o $OUT/test_asan
$OUT/test_asan
echo "-- harness under valgrind (zero errors, zero leaks)"
FG_TEST_SCALE=20 valgrind -q --error-exitcode=3 --leak-check=full \
  --show-leak-kinds=definite,indirect,possible --errors-for-leak-kinds=definite,indirect,possible \
  --suppressions=tests/c/valgrind.supp $OUT/test_shared

echo "-- install into a temporary prefix, build the example server with pkg-config"
PREFIX=$(mktemp -d)
trap 'rm -rf "$PREFIX"' EXIT
PREFIX=$PREFIX FG_PROFILE=debug ./scripts/install-c >/dev/null
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
gcc -std=c11 -Wall -Wextra -Werror examples/c/server.c $(pkg-config --cflags --libs floodgate libmicrohttpd) \
  -Wl,-rpath,"$PREFIX/lib" -o $OUT/server
echo "-- example server, checked with curl"
tests/c/test_server.sh $OUT/server
