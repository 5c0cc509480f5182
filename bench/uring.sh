#!/usr/bin/env bash
# FUSE over io_uring against plain /dev/fuse (issue 18, item 5): the same read-only
# FUSE floor (examples/uring_floor.rs: a host tree preloaded into memory, long TTLs,
# file data by READ, no passthrough) served over either transport, timed in one run,
# interleaved, every workload on a fresh mount.
#
#   cargo build --release --example uring_floor --example fuse_floor && sudo bench/uring.sh
#   sudo ROUNDS=9 SOURCE=/var/tmp/gentree-union-bench/fixture-rootfs/bottom bench/uring.sh
#   bench/uring.sh --report RESULTS.tsv          # re-print a run's tables
#
# Implementations (IMPLS, default "dev uring fuser"):
#   dev     uring_floor --transport dev: one thread per CPU, each on its own clone of
#           the /dev/fuse fd (read a request, write its reply), as fuser does.
#   uring   uring_floor --transport uring: one io_uring per CPU, its thread pinned to
#           that CPU, DEPTH ring entries each (default 4).
#   uring-b the same with URING_B_OPTS (to compare two ways of running the rings in
#           one run, e.g. URING_B_OPTS="--no-pin" or "--ring coop"); not default.
#   fuser   fuse_floor --no-passthrough: the same floor written on fuser, for scale
#           (not in the getattr rows: it has no --attr-ttl).
# The uring runs need /sys/module/fuse/parameters/enable_uring = Y at INIT: the script
# sets it for the few seconds from the daemon's start until it says it is serving
# (after which the connection keeps io_uring whatever the parameter says) and sets it
# back to N (the kernel's default) after, and on any exit, Ctrl-C included.
#
# Workloads (each from a fresh mount, as the kernel caches every answer of the floor
# for good; threads = CPUs, and N = CPUs client processes for the "xN" rows):
#   stat1 / statN    lstat of every entry of the tree by path, no listing: one LOOKUP
#                    per entry (python os.lstat from a list; N: the list in N shards)
#   getattr1 / getattrN  mounted with --attr-ttl 0: 20,000 lstat of one file per
#                    client by its path (d00/s00/f00000 in the fixture): a GETATTR
#                    of each directory on the path, the root included (default_
#                    permissions checks them), and of the file: 4 per lstat
#   direct1 / directN  20,000 preads of the first 4 KiB of one file per client, opened
#                    O_DIRECT: the page cache is bypassed, one READ each
#   read1 / readN    open + read + close of every regular file of at most 64 KiB
#                    (LOOKUP, OPEN, READ, RELEASE each; no passthrough)
#   walk             find over the whole tree (OPENDIR, READDIRPLUS, RELEASEDIR)
# Then the paired latency (LAT_BATCHES > 0): every implementation mounted at once,
# one client alternating batches of LAT_SIZE requests between them (the order
# rotating per batch, so load that comes and goes falls on all alike), each request
# timed alone: getattr = fstat of an open file with --attr-ttl 0 (one GETATTR), direct
# = a 4 KiB O_DIRECT pread (one READ). Reported: medians over batches of the mean,
# p50, p10, p90 in microseconds, the spread of the batch means, and the ratio to
# /dev/fuse of the same batch (median, min..max).
#
# The daemon counts the requests it answered (and how many came over io_uring: all of
# them, or the run is rejected); the report gives the median seconds, the spread, the
# requests of a run, the wall time per request (rows with one client: the latency a
# caller sees per round trip, client and VFS included; rows with N: the inverse of
# throughput) and the ratio io_uring / /dev/fuse (and fuser / /dev/fuse).
#
# Environment:
#   ROUNDS     rounds (default 5); each runs every workload on every implementation,
#              the implementation order rotating per round.
#   SOURCE     the tree to serve (default: a generated fixture in BENCH_DIR: 20,000
#              files of 0..8 KiB in 25 x 20 directories, 500 symlinks).
#   BENCH_DIR  work dir (default /var/tmp/gentree-uring-bench): fixture, results-*.tsv.
#   WORKLOADS  default "stat1 statN getattr1 getattrN direct1 directN read1 readN walk".
#   IMPLS      default "dev uring fuser".
#   LAT_BATCHES, LAT_SIZE  the paired latency's batches (default 30; 0: none) and
#              requests per batch (default 1000).
#   DEPTH      ring entries per queue (default 4).
#   URING_OPTS, URING_B_OPTS  more options of uring and uring-b (see uring_floor's
#              header: --no-pin, --ring plain|coop|defer).
#   URING_FLOOR, FUSE_FLOOR  the binaries (default target/release/examples/...).
#
# Figures, kernel 6.18, 2 CPUs shared with other sessions' builds (load 6-7 all
# along), the default fixture (21,025 entries):
#   sudo ROUNDS=7 LAT_BATCHES=40 bench/uring.sh
#   time per request, us (median of 7; one client: latency, N = 2 clients: 1/throughput)
#   and uring / dev:
#     workload   dev    uring  fuser   uring/dev   (spread of dev | uring, s)
#     stat1      43.4   35.2   50.7    0.81x       0.58..1.57 | 0.45..0.89
#     getattr1   23.3   16.8   -       0.72x       1.32..2.30 | 1.15..2.18
#     direct1    30.7   22.6   31.4    0.74x       0.33..1.78 | 0.37..0.76
#     read1      45.9   28.4   39.3    0.62x       2.62..4.15 | 1.62..4.39
#     walk       85.3   79.7   128.3   0.93x       0.13..0.29 | 0.15..0.19
#     statN      47.7   22.4   34.7    0.47x
#     getattrN   17.2   10.2   -       0.59x
#     directN    20.6   11.6   21.6    0.56x
#     readN      25.0   16.3   27.0    0.65x
#   paired latency, one request timed alone, us (medians of 40 batches of 1000):
#     getattr (fstat)   mean  p50   p10   p90   mean/dev in the same batch
#       dev             85.2  40.5  34.6  64.8  -
#       uring           19.9  18.9  16.9  20.9  0.23x (0.18..1.21)
#     direct (4 KiB)
#       dev             21.7  21.2  17.6  24.4  -
#       uring           21.4  19.7  19.1  22.0  0.96x (0.71..1.33)
#       fuser           23.0  21.3  18.6  25.9  1.05x (0.71..1.50)
#   (dev's fstat ran at 40 us for 38 batches and at 18.5 us, uring's figure, for the
#   last 2: the /dev/fuse reader that wakes is often on the other, busy CPU.)
#   sudo ROUNDS=1 WORKLOADS=" " LAT_BATCHES=60 IMPLS="dev uring uring-b" \
#     URING_B_OPTS=--no-pin bench/uring.sh       (load 5.4-6.0)
#     getattr   dev 29.5 mean, 21.5 p50, 15.2 p10, 42.8 p90; uring 18.9/17.6/16.0/19.7
#               (0.64x); uring --no-pin 27.6/20.1/16.9/30.9 (0.97x)
#     direct    dev 34.9/25.4/17.9/50.3; uring 23.4/21.2/19.4/24.0 (0.67x);
#               uring --no-pin 24.2/21.9/19.5/25.7 (0.74x)
#   and ROUNDS=7 IMPLS="dev uring uring-b fuser" URING_B_OPTS=--no-pin (load 7-9):
#   uring --no-pin / dev 1.03x stat1, 1.12x getattr1, 1.13x direct1, 1.26x read1.
# So: the io_uring transport itself is no cheaper per request (p10 16.0 against 15.2
# us for a GETATTR, 19.4 against 17.9 for a 4 KiB READ; unpinned rings gain nothing
# for one caller). What it gains is locality: the kernel queues a request on the
# ring of the caller's CPU, whose pinned thread answers it there, while a /dev/fuse
# request wakes whichever reader waits first, often on the other CPU. On this loaded
# machine one caller's mean latency is 0.62-0.81x of /dev/fuse in the per-mount rows
# (walk 0.93x), 0.64-0.67x in the second paired run and 0.23x/0.96x in the first; its
# p90 about half, its p50 0.47-0.93x; N callers take 0.47-0.65x the time. On a quiet
# machine the one-caller gain should shrink toward the p10 figures (none): not
# checked, the machine was never quiet during this work.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp/gentree-uring-bench}
read -r -a WORKLOADS <<<"${WORKLOADS:-stat1 statN getattr1 getattrN direct1 directN read1 readN walk}"
read -r -a IMPLS <<<"${IMPLS:-dev uring fuser}"
DEPTH=${DEPTH:-4}
read -r -a URING_OPTS <<<"${URING_OPTS:-}"
read -r -a URING_B_OPTS <<<"${URING_B_OPTS:-}"
URING_FLOOR=${URING_FLOOR:-target/release/examples/uring_floor}
FUSE_FLOOR=${FUSE_FLOOR:-target/release/examples/fuse_floor}
CPUS=$(nproc)
# Round trips of each client in the getattr and direct rows.
REPS=20000
LAT_BATCHES=${LAT_BATCHES:-30}
LAT_SIZE=${LAT_SIZE:-1000}
FIXTURE_VERSION="v1 files=20000 links=500"
PARAM=/sys/module/fuse/parameters/enable_uring

die() { echo "uring.sh: $*" >&2; exit 1; }

# Prints medians, spread, requests, time per request and ratios from a results file.
report() {
  python3 - "$1" <<'EOF'
import csv, statistics, sys
runs, reqs = {}, {}
for row in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    k = (row["impl"], row["workload"])
    runs.setdefault(k, []).append(float(row["seconds"]))
    reqs.setdefault(k, []).append(int(row["requests"]))
order = ["stat1", "statN", "getattr1", "getattrN", "direct1", "directN", "read1", "readN", "walk"]
workloads = [w for w in order if any(k[1] == w for k in runs)]
impls = [i for i in ["dev", "uring", "uring-b", "fuser"] if any(k[0] == i for k in runs)]
med = {k: statistics.median(v) for k, v in runs.items()}
mreq = {k: statistics.median(v) for k, v in reqs.items()}
# fuse_floor counts no requests: the same workload on the same kernel makes the
# same requests, so its rows use /dev/fuse's count.
for (i, w) in list(mreq):
    if i == "fuser" and ("dev", w) in mreq:
        mreq[(i, w)] = mreq[("dev", w)]
def cell(k, f):
    return f(k) if k in med else "-"
def table(title, f, width=14):
    print(f"\n== {title}")
    print(f"{'workload':<10}" + "".join(f"{i:>{width}}" for i in impls))
    for w in workloads:
        print(f"{w:<10}" + "".join(f"{cell((i, w), f):>{width}}" for i in impls))
table("median seconds", lambda k: f"{med[k]:.3f}")
table("spread: min..max seconds", lambda k: f"{min(runs[k]):.3f}..{max(runs[k]):.3f}", 16)
table("requests per run (median)", lambda k: f"{mreq[k]:.0f}")
table("wall time per request, us (one client: latency; N clients: 1/throughput)",
      lambda k: f"{med[k] / mreq[k] * 1e6:.1f}" if mreq[k] else "-")
print("\n== ratio of median time to /dev/fuse (lower is faster)")
others = [i for i in impls if i != "dev"]
print(f"{'workload':<10}" + "".join(f"{i + '/dev':>14}" for i in others))
for w in workloads:
    r = []
    for i in others:
        r.append(f"{med[(i, w)] / med[('dev', w)]:.2f}x" if (i, w) in med and ("dev", w) in med else "-")
    print(f"{w:<10}" + "".join(f"{c:>14}" for c in r))
EOF
}

# Prints the paired latency tables from a latency file: per kind and implementation,
# the medians over batches of the mean, p50, p10 and p90 of single requests, the
# spread of the batch means, and the ratio to /dev/fuse within each batch.
report_latency() {
  python3 - "$1" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
impls = [i for i in ["dev", "uring", "uring-b", "fuser"] if any(r["impl"] == i for r in rows)]
for kind in ["getattr", "direct"]:
    by = {}
    for r in rows:
        if r["kind"] == kind:
            by.setdefault(r["impl"], {})[int(r["batch"])] = r
    if not by:
        continue
    print(f"\n== {kind}: one request timed alone, us (medians over batches)")
    print(f"{'impl':<9}{'mean':>8}{'p50':>8}{'p10':>8}{'p90':>8}{'batch means':>16}"
          f"{'mean / dev, same batch':>26}")
    for i in impls:
        if i not in by:
            continue
        b = by[i]
        med = lambda col: statistics.median(float(r[col]) for r in b.values())
        means = [float(r["mean_us"]) for r in b.values()]
        ratio = "-"
        if i != "dev" and "dev" in by:
            rs = [float(b[k]["mean_us"]) / float(by["dev"][k]["mean_us"]) for k in b if k in by["dev"]]
            ratio = f"{statistics.median(rs):.2f}x ({min(rs):.2f}..{max(rs):.2f})"
        spread = f"{min(means):.1f}..{max(means):.1f}"
        print(f"{i:<9}{med('mean_us'):>8.1f}{med('p50_us'):>8.1f}{med('p10_us'):>8.1f}"
              f"{med('p90_us'):>8.1f}{spread:>16}{ratio:>26}")
EOF
}

if [[ ${1:-} == --report ]]; then
  [[ -f ${2:-} ]] || die "usage: $0 --report RESULTS.tsv|LATENCY.tsv"
  case $2 in
    *latency-*) report_latency "$2" ;;
    *) report "$2" ;;
  esac
  exit 0
fi

[[ $(id -u) == 0 ]] || die "run as root (mount(2), enable_uring): sudo $0"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$ROUNDS'"
for t in python3 find mountpoint; do
  command -v "$t" >/dev/null || die "$t is not installed"
done
for i in "${IMPLS[@]}"; do
  case $i in
    dev | uring | uring-b) [[ -x $URING_FLOOR ]] || die "no $URING_FLOOR (cargo build --release --example uring_floor)" ;;
    fuser) [[ -x $FUSE_FLOOR ]] || die "no $FUSE_FLOOR (cargo build --release --example fuse_floor)" ;;
    *) die "unknown implementation '$i' (dev, uring, uring-b, fuser)" ;;
  esac
done
[[ -f $PARAM ]] || die "$PARAM missing: this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING, 6.14+)"

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
if [[ -z ${SOURCE:-} ]]; then
  SOURCE=$BENCH_DIR/fixture
  if [[ $(cat "$SOURCE.stamp" 2>/dev/null) != "$FIXTURE_VERSION" ]]; then
    echo "== generating fixture in $SOURCE"
    rm -rf "$SOURCE"
    python3 - "$SOURCE" <<'EOF'
import os, sys
root = sys.argv[1]
for i in range(20000):
    d = f"{root}/d{i // 800:02d}/s{(i // 40) % 20:02d}"
    os.makedirs(d, exist_ok=True)
    line = b"gentree uring bench %08d\n" % i
    n = (i * 7919) % 8192
    with open(f"{d}/f{i:05d}", "wb") as f:
        f.write((line * (n // len(line) + 1))[:n])
for i in range(500):
    os.symlink(f"../s{i % 20:02d}/f{i * 40:05d}", f"{root}/d{i % 25:02d}/l{i:03d}")
EOF
    echo "$FIXTURE_VERSION" > "$SOURCE.stamp"
  fi
fi
[[ -d $SOURCE ]] || die "SOURCE $SOURCE is not a directory"
SOURCE=$(cd "$SOURCE" && pwd)

WORK=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
MNT=$WORK/mnt
mkdir -p "$MNT"
RESULTS=$BENCH_DIR/results-$(date -u +%Y%m%dT%H%M%SZ).tsv
LATENCY_RESULTS=${RESULTS/results-/latency-}
DAEMON=
# Every daemon started, and every mountpoint used, for the cleanup.
DAEMONS=()
cleanup() {
  echo N > "$PARAM" || true
  local m d
  for m in "$WORK"/mnt*; do
    # Also a dead connection (mountpoint(1) cannot stat it).
    grep -q " $m " /proc/mounts && { umount "$m" 2>/dev/null || umount -l "$m" || true; }
  done
  for d in "${DAEMONS[@]}"; do
    kill "$d" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The path lists (relative to the tree), made once from SOURCE; the host files are
# read once so the floor's preads come from the page cache in every round.
python3 - "$SOURCE" "$WORK" <<'EOF'
import os, sys
src, work = sys.argv[1], sys.argv[2]
entries, files, direct = [], [], []
for d, dirs, names in os.walk(src):
    dirs.sort()
    for n in sorted(dirs + names):
        p = os.path.join(d, n)
        rel = os.path.relpath(p, src)
        entries.append(rel)
        st = os.lstat(p)
        if os.path.isfile(p) and not os.path.islink(p) and st.st_size <= 65536:
            files.append(rel)
            if st.st_size >= 4096:
                direct.append(rel)
            with open(p, "rb") as f:
                f.read()
open(f"{work}/entries", "w").write("".join(e + "\n" for e in entries))
open(f"{work}/files", "w").write("".join(e + "\n" for e in files))
open(f"{work}/one", "w").write(files[0] + "\n")
if not direct:
    sys.exit(f"no regular file of 4..64 KiB in {src} for the direct rows")
open(f"{work}/direct", "w").write(direct[0] + "\n")
EOF
echo "== tree: $SOURCE: $(wc -l <"$WORK/entries") entries, $(wc -l <"$WORK/files") regular files of <= 64 KiB"

# The client: KIND (stat, read, getattr or direct) over the list LIST under the mount,
# in NPROC forked processes (the list in NPROC shards; getattr and direct: each process
# stats, or reads 4 KiB of, the one file REPS times); prints the seconds from the start signal to the last
# child's exit.
cat > "$WORK/client.py" <<'EOF'
import mmap, os, sys, time
kind, mnt, lst, nproc, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
paths = [os.path.join(mnt, l.rstrip("\n")) for l in open(lst)]
def work(part):
    if kind == "stat":
        for p in part:
            os.lstat(p)
    elif kind == "getattr":
        p = part[0]
        for _ in range(reps):
            os.lstat(p)
    elif kind == "direct":
        # O_DIRECT wants an aligned buffer: an anonymous mapping is page-aligned.
        fd, buf = os.open(part[0], os.O_RDONLY | os.O_DIRECT), mmap.mmap(-1, 4096)
        for _ in range(reps):
            if os.preadv(fd, [buf], 0) != 4096:
                sys.exit(f"short O_DIRECT read of {part[0]}")
        os.close(fd)
    else:
        for p in part:
            fd = os.open(p, os.O_RDONLY)
            while os.read(fd, 1 << 20):
                pass
            os.close(fd)
go_r, go_w = os.pipe()
kids = []
for k in range(nproc):
    part = paths if kind in ("getattr", "direct") else paths[k::nproc]
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.read(go_r, 1)
        work(part)
        os._exit(0)
    kids.append(pid)
os.close(go_r)
time.sleep(0.05)
t0 = time.perf_counter()
os.write(go_w, b"x" * nproc)
bad = 0
for pid in kids:
    _, status = os.waitpid(pid, 0)
    bad += status != 0
t1 = time.perf_counter()
if bad:
    sys.exit(f"{bad} client processes failed")
print(f"{t1 - t0:.6f}")
EOF

# Starts IMPL ($1) on a fresh mount at $3 (default $MNT; getattr rows: $2 = attr TTL
# 0) and waits until it serves; the daemon's stderr goes to $4 (default $WORK/log), its
# pid to DAEMON.
mount_impl() {
  local impl=$1 ttl=${2:-} mnt=${3:-$MNT} log=${4:-$WORK/log} i
  local -a cmd
  case $impl in
    dev) cmd=("$URING_FLOOR" --transport dev) ;;
    uring) cmd=("$URING_FLOOR" --transport uring --depth "$DEPTH" "${URING_OPTS[@]}") ;;
    uring-b) cmd=("$URING_FLOOR" --transport uring --depth "$DEPTH" "${URING_B_OPTS[@]}") ;;
    fuser) cmd=("$FUSE_FLOOR" --no-passthrough) ;;
  esac
  [[ -n $ttl ]] && cmd+=(--attr-ttl 0)
  [[ $impl == uring* ]] && echo Y > "$PARAM"
  # Emptied first: the wait below must not see the previous daemon's lines.
  : > "$log"
  "${cmd[@]}" "$SOURCE" "$mnt" 2>>"$log" &
  DAEMON=$!
  DAEMONS+=("$DAEMON")
  for ((i = 0; i < 600; i++)); do
    if [[ $impl == fuser ]]; then
      mountpoint -q "$mnt" && grep -q "entries preloaded" "$log" && break
    else
      grep -q "serving by" "$log" && break
    fi
    kill -0 "$DAEMON" 2>/dev/null || { cat "$log" >&2; die "$impl failed to mount"; }
    sleep 0.05
  done
  echo N > "$PARAM"
  ((i < 600)) || { cat "$log" >&2; die "$impl did not start serving in 30 s"; }
}

# Unmounts $3 (default $MNT), waits for the daemon DAEMON (or $2) and sets REQS to the
# requests it answered (uring_floor's count in its log $4; fuser's floor counts none: 0).
umount_impl() {
  local impl=$1 daemon=${2:-$DAEMON} mnt=${3:-$MNT} log=${4:-$WORK/log} line total ring
  umount "$mnt"
  wait "$daemon" || { cat "$log" >&2; die "$impl exited with an error"; }
  local -a left=()
  local d
  for d in "${DAEMONS[@]}"; do [[ $d == "$daemon" ]] || left+=("$d"); done
  DAEMONS=("${left[@]}")
  REQS=0
  [[ $impl == fuser ]] && return
  line=$(grep "requests" "$log") || die "$impl printed no request count"
  total=$(sed -E 's/.*requests ([0-9]+).*/\1/' <<<"$line")
  ring=$(sed -E 's/.*over io_uring ([0-9]+),.*/\1/' <<<"$line")
  if [[ $impl == uring* && $ring != "$total" ]]; then
    die "uring: only $ring of $total requests came over io_uring: $line"
  fi
  REQS=$total
}

run_workload() {
  local w=$1
  case $w in
    stat1) python3 "$WORK/client.py" stat "$MNT" "$WORK/entries" 1 0 ;;
    statN) python3 "$WORK/client.py" stat "$MNT" "$WORK/entries" "$CPUS" 0 ;;
    getattr1) python3 "$WORK/client.py" getattr "$MNT" "$WORK/one" 1 "$REPS" ;;
    getattrN) python3 "$WORK/client.py" getattr "$MNT" "$WORK/one" "$CPUS" "$REPS" ;;
    direct1) python3 "$WORK/client.py" direct "$MNT" "$WORK/direct" 1 "$REPS" ;;
    directN) python3 "$WORK/client.py" direct "$MNT" "$WORK/direct" "$CPUS" "$REPS" ;;
    read1) python3 "$WORK/client.py" read "$MNT" "$WORK/files" 1 0 ;;
    readN) python3 "$WORK/client.py" read "$MNT" "$WORK/files" "$CPUS" 0 ;;
    walk)
      local t0 t1
      t0=$(date +%s.%N)
      find "$MNT" >/dev/null
      t1=$(date +%s.%N)
      python3 -c "print(f'{$t1 - $t0:.6f}')" ;;
    *) die "unknown workload '$w'" ;;
  esac
}

printf 'round\timpl\tworkload\tseconds\trequests\n' > "$RESULTS"
echo "== $ROUNDS rounds, $CPUS CPUs, workloads: ${WORKLOADS[*]}; implementations: ${IMPLS[*]}"
for ((r = 1; r <= ROUNDS; r++)); do
  n=${#IMPLS[@]}
  for w in "${WORKLOADS[@]}"; do
    for ((k = 0; k < n; k++)); do
      impl=${IMPLS[$(((k + r) % n))]}
      ttl=
      case $w in getattr*) [[ $impl == fuser ]] && continue; ttl=0 ;; esac
      mount_impl "$impl" $ttl
      secs=$(run_workload "$w")
      umount_impl "$impl"
      printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$impl" "$w" "$secs" "$REQS" >> "$RESULTS"
      printf 'round %d %-6s %-9s %8.3f s %8s requests\n' "$r" "$impl" "$w" "$secs" "$REQS"
    done
  done
done
echo "== results: $RESULTS (machine load: $(cut -d' ' -f1-3 /proc/loadavg))"
report "$RESULTS"

((LAT_BATCHES > 0)) || exit 0
# Paired latency: every implementation mounted at once (uring_floor with --attr-ttl
# 0), one client alternating batches of LAT_SIZE requests between them, the order
# rotating per batch, so a change of the machine's load falls on all of them alike.
# getattr is fstat of an open file (one GETATTR each), direct a 4 KiB O_DIRECT pread
# (one READ each); each request is timed alone.
cat > "$WORK/latency.py" <<'EOF'
import mmap, os, sys, time
kind, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
targets = [a.split("=", 1) for a in sys.argv[4:]]
ops = {}
for impl, path in targets:
    flags = os.O_RDONLY | (os.O_DIRECT if kind == "direct" else 0)
    fd, buf = os.open(path, flags), mmap.mmap(-1, 4096)
    if kind == "getattr":
        ops[impl] = lambda fd=fd: os.fstat(fd)
    else:
        def op(fd=fd, buf=buf, path=path):
            if os.preadv(fd, [buf], 0) != 4096:
                sys.exit(f"short O_DIRECT read of {path}")
        ops[impl] = op
clock = time.perf_counter_ns
for b in range(-1, batches):  # batch -1: a warm-up, not printed
    k = b % len(targets)
    for impl, _ in targets[k:] + targets[:k]:
        op, samples = ops[impl], []
        for _ in range(size):
            t = clock()
            op()
            samples.append(clock() - t)
        if b < 0:
            continue
        samples.sort()
        us = lambda q: samples[min(size - 1, int(size * q))] / 1000
        print(f"{b}\t{impl}\t{kind}\t{sum(samples) / size / 1000:.3f}\t{us(0.5):.3f}"
              f"\t{us(0.1):.3f}\t{us(0.9):.3f}", flush=True)
EOF
declare -A LAT_DAEMON
printf 'batch\timpl\tkind\tmean_us\tp50_us\tp10_us\tp90_us\n' > "$LATENCY_RESULTS"
for impl in "${IMPLS[@]}"; do
  mkdir -p "$WORK/mnt-$impl"
  ttl=0
  [[ $impl == fuser ]] && ttl=
  mount_impl "$impl" "$ttl" "$WORK/mnt-$impl" "$WORK/log-$impl"
  LAT_DAEMON[$impl]=$DAEMON
done
echo "== paired latency: ${IMPLS[*]} mounted at once, $LAT_BATCHES batches of $LAT_SIZE" \
  "requests per kind (machine load: $(cut -d' ' -f1-3 /proc/loadavg))"
for kind in getattr direct; do
  file=$WORK/direct
  [[ $kind == getattr ]] && file=$WORK/one
  targets=()
  for impl in "${IMPLS[@]}"; do
    [[ $kind == getattr && $impl == fuser ]] && continue
    targets+=("$impl=$WORK/mnt-$impl/$(cat "$file")")
  done
  python3 "$WORK/latency.py" "$kind" "$LAT_BATCHES" "$LAT_SIZE" "${targets[@]}" >> "$LATENCY_RESULTS"
done
for impl in "${IMPLS[@]}"; do
  umount_impl "$impl" "${LAT_DAEMON[$impl]}" "$WORK/mnt-$impl" "$WORK/log-$impl"
  [[ $impl == fuser ]] || echo "$impl: $(grep requests "$WORK/log-$impl")"
done
echo "== latency results: $LATENCY_RESULTS (machine load: $(cut -d' ' -f1-3 /proc/loadavg))"
report_latency "$LATENCY_RESULTS"
