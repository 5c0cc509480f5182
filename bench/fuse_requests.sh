#!/usr/bin/env bash
# FUSE request profile of one command (issue 18): counts the requests every FUSE
# connection received while CMD ran, per opcode, with the time each spent between the
# kernel's send and the daemon's reply (the kernel's fuse:fuse_request_send and
# fuse:fuse_request_end tracepoints, read from tracefs), so a build's overhead can be
# split into round trips: how many LOOKUPs, OPENs, READs... and what they cost.
#
#   sudo bench/fuse_requests.sh target/release/gentree-fs build --rebuild -o /tmp/x.tar app.toml
#
# Prints one line per opcode: requests, total and mean latency in ms. Latency includes
# the time a request waited for a free daemon thread, so it is what the caller waited.
# Needs root and tracefs (/sys/kernel/tracing); the trace buffer is shared, so run
# nothing else that uses ftrace meanwhile. Other FUSE mounts active meanwhile count
# too: the report names each connection (its device number) apart.
set -euo pipefail

die() { echo "fuse_requests.sh: $*" >&2; exit 1; }
(($#)) || die "usage: $0 CMD [ARGS...]"
((EUID == 0)) || die "run as root (tracefs)"
T=/sys/kernel/tracing
[[ -d $T/events/fuse ]] || T=/sys/kernel/debug/tracing
[[ -d $T/events/fuse ]] || die "no fuse tracepoints in tracefs (mount -t tracefs nodev /sys/kernel/tracing)"

out=$(mktemp)
cleanup() {
  echo 0 > "$T/events/fuse/enable" || true
  echo 0 > "$T/tracing_on" || true
  [[ -n ${reader:-} ]] && kill "$reader" 2>/dev/null || true
  rm -f "$out"
}
trap cleanup EXIT
echo 0 > "$T/tracing_on"
echo > "$T/trace"
echo 16384 > "$T/buffer_size_kb"
echo 1 > "$T/events/fuse/enable"
cat "$T/trace_pipe" > "$out" &
reader=$!
echo 1 > "$T/tracing_on"
t0=$(date +%s.%N)
rc=0
"$@" || rc=$?
t1=$(date +%s.%N)
echo 0 > "$T/tracing_on"
sleep 1
kill "$reader" 2>/dev/null || true
wait "$reader" 2>/dev/null || true
echo "command exited $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
python3 - "$out" <<'EOF'
import re, sys, collections
send = {}
stats = collections.defaultdict(lambda: [0, 0.0])
lost = 0
pat = re.compile(r"\s(\d+\.\d+): fuse_request_(send|end): connection (\d+) req (\d+)(?: opcode \d+ \((\w+)\))?")
for line in open(sys.argv[1], errors="replace"):
    m = pat.search(line)
    if not m:
        if "LOST" in line:
            lost += 1
        continue
    ts, kind, conn, req, op = float(m[1]), m[2], m[3], m[4], m[5]
    if kind == "send":
        send[(conn, req)] = (ts, op)
    elif (conn, req) in send:
        t, op = send.pop((conn, req))
        s = stats[(conn, op)]
        s[0] += 1
        s[1] += ts - t
if lost:
    print(f"warning: the trace buffer overflowed {lost} times: counts are low")
for conn in sorted({c for c, _ in stats}):
    rows = sorted(((op, n, t) for (c, op), (n, t) in stats.items() if c == conn), key=lambda r: -r[2])
    total_n, total_t = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"connection {conn}: {total_n} requests, {total_t * 1000:.0f} ms waited in all")
    print(f"  {'opcode':<20}{'requests':>10}{'total ms':>10}{'mean us':>9}")
    for op, n, t in rows:
        print(f"  {op:<20}{n:>10}{t * 1000:>10.0f}{t / n * 1e6:>9.0f}")
EOF
exit "$rc"
