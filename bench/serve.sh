#!/usr/bin/env bash
# Binhost download benchmark (issue 7): `gentree-fs serve` against python3's
# http.server on the same package dir, timed in one run and interleaved.
#
#   cargo build --release && bench/serve.sh              # 5 rounds
#   ROUNDS=9 GENTREE_FS=target/debug/gentree-fs bench/serve.sh
#
# Environment:
#   ROUNDS       rounds (default 5); each round downloads with every server in turn.
#   GENTREE_FS   gentree-fs binary (default target/release/gentree-fs).
#   BENCH_DIR    work dir (default /var/tmp/gentree-serve-bench).
#   SIZE_MB      size of the large package file (default 512).
#
# Workloads (warm page cache), each a download to /dev/null by bash's /dev/tcp and cat
# (so the client costs the same for both servers):
#   big      one SIZE_MB file
#   small    200 requests for a 10 KiB file, one connection each
# No seed is needed: `serve` is started on an empty seed directory (no build runs).
# The report gives the median seconds and the ratio gentree/python.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
GENTREE_FS=${GENTREE_FS:-target/release/gentree-fs}
BENCH_DIR=${BENCH_DIR:-/var/tmp/gentree-serve-bench}
SIZE_MB=${SIZE_MB:-512}

[ -x "$GENTREE_FS" ] || { echo "no $GENTREE_FS: cargo build --release first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed (the baseline)" >&2; exit 1; }

conf=$BENCH_DIR/conf
pkgdir=$conf/pkgdir
mkdir -p "$conf/seeds/bench" "$pkgdir/app-misc/big"
if [ "$(stat -c %s "$pkgdir/app-misc/big/big-1-1.gpkg.tar" 2>/dev/null)" != $((SIZE_MB << 20)) ]; then
	head -c $((SIZE_MB << 20)) /dev/urandom >"$pkgdir/app-misc/big/big-1-1.gpkg.tar"
fi
head -c 10240 /dev/urandom >"$pkgdir/Packages"
cat "$pkgdir/app-misc/big/big-1-1.gpkg.tar" >/dev/null # warm the cache

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$GENTREE_FS" serve --no-config --conf-root "$conf" --port 0 bench 2>"$BENCH_DIR/serve.err" &
pids+=($!)
python3 -m http.server --bind 127.0.0.1 --directory "$pkgdir" 0 >"$BENCH_DIR/python.out" 2>&1 &
pids+=($!)
port_of() { # file pattern
	for _ in $(seq 100); do
		p=$(grep -o "$2" "$1" 2>/dev/null | grep -o '[0-9]*$' | head -1 || true)
		[ -n "$p" ] && { echo "$p"; return; }
		sleep 0.1
	done
	echo "no port in $1" >&2
	exit 1
}
gport=$(port_of "$BENCH_DIR/serve.err" '127.0.0.1:[0-9]*')
pport=$(port_of "$BENCH_DIR/python.out" 'port [0-9]*')

get() { # port path: the whole response to /dev/null
	exec 3<>"/dev/tcp/127.0.0.1/$1"
	printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
	cat <&3 >/dev/null
	exec 3<&-
}
# Check both serve the same bytes first.
for port in $gport $pport; do
	n=$(exec 3<>"/dev/tcp/127.0.0.1/$port"
		printf 'GET /app-misc/big/big-1-1.gpkg.tar HTTP/1.0\r\n\r\n' >&3
		cat <&3 | wc -c)
	[ "$n" -gt $((SIZE_MB << 20)) ] || { echo "port $port sent $n bytes" >&2; exit 1; }
done

secs() { local t0=$EPOCHREALTIME; "$@"; awk "BEGIN { print $EPOCHREALTIME - $t0 }"; }
small() { for _ in $(seq 200); do get "$1" /Packages; done; }

results=$BENCH_DIR/results.tsv
: >"$results"
for r in $(seq "$ROUNDS"); do
	for impl in gentree python; do
		port=$gport; [ $impl = python ] && port=$pport
		printf '%s\t%s\t%s\n' big $impl "$(secs get "$port" /app-misc/big/big-1-1.gpkg.tar)" >>"$results"
		printf '%s\t%s\t%s\n' small $impl "$(secs small "$port")" >>"$results"
	done
	echo "round $r done" >&2
done

python3 - "$results" "$SIZE_MB" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
size = int(sys.argv[2])
med = {}
for w, impl, t in rows:
    med.setdefault((w, impl), []).append(float(t))
print(f"{'workload':8} {'gentree s':>10} {'python s':>10} {'ratio':>6}")
for w in ("big", "small"):
    g = statistics.median(med[(w, "gentree")])
    p = statistics.median(med[(w, "python")])
    extra = f"   ({size / g:.0f} vs {size / p:.0f} MiB/s)" if w == "big" else ""
    print(f"{w:8} {g:10.3f} {p:10.3f} {g / p:6.2f}{extra}")
EOF
