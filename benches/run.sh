#!/usr/bin/env bash
# Builds muxloop's benchmark examples and the C peers, then runs the
# comparison (benches/run.py): bench.c against libev and libevent, the echo
# servers against the mio, tokio, libev and libevent peers, the
# idle-connections demo, and TLS against tokio-rustls. Everything on
# loopback, bounded in time.
#
#   bash benches/run.sh [--rounds N] [--seconds S] [--quick] [--only PART,...]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! { [ -e /usr/include/ev.h ] && [ -e /usr/include/event2/event.h ]; }; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq libev-dev libevent-dev >/dev/null
    else
        echo "run.sh: libev-dev and libevent-dev are needed for the C peers" >&2
        exit 1
    fi
fi

cargo build --release --quiet \
    --example bench --example echo_server --example echo_load \
    --example peer_mio_echo --example peer_tokio_echo --example io_models \
    --example udp_echo --example udp_load --example peer_tokio_udp
# The TLS part: the same servers with feature tls, built apart so that the
# plaintext parts above measure the default build.
CARGO_TARGET_DIR=target/bench-tls cargo build --release --quiet --features tls \
    --example echo_server --example http_hello --example make_cert \
    --example tls_load --example peer_tokio_tls

out=target/bench-c
mkdir -p "$out"
for prog in bench_libev:-lev bench_libevent:-levent echo_libev:-lev echo_libevent:-levent; do
    name=${prog%%:*}
    lib=${prog#*:}
    gcc -O2 -Wall -o "$out/$name" "benches/c/$name.c" "$lib"
done

exec python3 benches/run.py "$@"
