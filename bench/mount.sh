#!/usr/bin/env bash
# Benchmark of the gentree mount's finished images (issue 6, "Performance").
#
#   cargo build --release && bench/mount.sh            # 5 rounds (root, or a user with fusermount3)
#   ROUNDS=9 GENTREE_FS=/path/to/gentree-fs bench/mount.sh
#
# Environment:
#   ROUNDS      rounds (default 5), interleaved: each round measures every case in turn.
#   GENTREE_FS  binary (default target/release/gentree-fs).
#   BENCH_DIR   work dir (default /var/tmp/gentree-mount-bench); the fixture is kept and
#               reused.
#   MOUNT_ARGS  extra daemon arguments, e.g. --no-image-files for the served path of a
#               root daemon (by default a root daemon serves finished images by FUSE
#               passthrough from its image files, CONF/images/*.tar).
#
# Fixture (made by this script, no Portage): a fake seed `s1` and two configs on it,
# `big` and `many`. Their layers are written straight into the layer store under the
# keys the mount reports (`user.gentree.key`): `big` holds 8 x 128 MiB files (1 GiB of
# random bytes), `many` 30,000 files of 0..8 KiB (~120 MB). The first mount builds each
# image's index (no emerge: every layer exists); `big.tar` is then copied once to an
# ordinary file, the baseline with the very same bytes.
#
# Each round, with the layer files and the baseline warm in the page cache:
#   first  fresh mount (no page cache for the image), then `cat builds/big.tar` and
#          `cp builds/big.tar`: the daemon produces every byte;
#   again  the same tool again on the same mount (page cache, if the mount keeps it);
#   warm   and a third time (the second touch of a cached page activates it on the LRU
#          lists, which the ordinary file, read many times, no longer pays);
#   file   the same tool on the ordinary file (read many times: its pages are active);
#   fresh  the same tool on a fresh copy of it, written (and synced) just before: its
#          pages are touched for the second time, as the mount's are in `again`.
# Sinks: `cat F >/dev/null`, `cp F /dev/null` on both sides. Also per round: time to
# the first byte of `many.tar` on a fresh mount (open + 512-byte read, from the
# persisted index; the daemon preloads finished images' indexes when it starts, so
# this is the open of an image already in memory) and the daemon's peak RSS (VmHWM) after streaming big.tar.
# Prints medians, throughput ratios against the file, and the targets:
# >= 0.9x cat throughput, first byte < 20 ms, RSS < 100 MiB.
#
# Measured with FUSE passthrough (2026-11-22, 2 shared cores, kernel 6.18, root, ROUNDS=5,
# image files written in 4 MiB writes): cat 1.16x first / 1.05x again / 0.97x warm, cp
# 1.02x / 1.01x / 1.01x; first byte 1.0 ms; VmHWM 12 MiB. The same run with
# MOUNT_ARGS=--no-image-files (the served path below): cat 0.27x / 0.66x / 0.82x, cp
# 0.26x / 0.62x / 0.74x.
#
# Served path, before passthrough (ROUNDS=7): first read 0.21x
# (cat) / 0.25x (cp); second read 0.63x / 0.67x; third 0.84x / 0.85x; first byte
# 1.3 ms; VmHWM 14 MiB. A first read copies every byte three times (pread into the
# daemon, writev into the FUSE page cache, the reader's copy) against once for a
# cached ordinary file; fuser has no splice, and passthrough would need the image as
# a file. Cached reads pay the kernel's per-folio cost of FUSE's smaller folios
# (perf: filemap_get_read_batch ~13% of a cached cat, absent on ext4).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
GENTREE_FS=${GENTREE_FS:-$here/target/release/gentree-fs}
BENCH_DIR=${BENCH_DIR:-/var/tmp/gentree-mount-bench}
FIXTURE_VERSION="v1 big=8x128MiB many=30000"

die() { echo "mount.sh: $*" >&2; exit 1; }
[[ -x $GENTREE_FS ]] || die "no binary $GENTREE_FS (cargo build --release)"
command -v python3 >/dev/null || die "python3 is needed"

conf=$BENCH_DIR/conf
cfg=$BENCH_DIR/cfg
mp=$BENCH_DIR/mp
base=$BENCH_DIR/big.tar
results=$BENCH_DIR/results.tsv
mkdir -p "$conf/seeds/s1/etc" "$cfg" "$mp"
echo s1 >"$conf/seeds/s1/etc/hostname"
printf 'seed = "s1"\n' >"$cfg/big.toml"
printf 'seed = "s1"\n' >"$cfg/many.toml"

daemon_pid=
mount_fs() {
  # shellcheck disable=SC2086
  "$GENTREE_FS" -f --no-config ${MOUNT_ARGS:-} --conf-root "$conf" --configs "$cfg" "$mp" \
    2>>"$BENCH_DIR/daemon.err" &
  daemon_pid=$!
  for _ in $(seq 200); do
    [[ -d $mp/builds ]] && return 0
    kill -0 "$daemon_pid" 2>/dev/null || die "daemon failed: $(tail -5 "$BENCH_DIR/daemon.err")"
    sleep 0.05
  done
  die "mount did not come up"
}
unmount_fs() {
  [[ -n $daemon_pid ]] || return 0
  fusermount3 -u "$mp" 2>/dev/null || umount "$mp" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=
}
trap unmount_fs EXIT

# A layer under the key the mount reports for a config, filled by python ($2: kind).
make_layer() {
  local name=$1 kind=$2 key dir
  key=$(python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], "user.gentree.key").decode())' \
    "$mp/builds/$name.tar")
  dir=$conf/layers/$key
  [[ -f $dir/meta.json ]] && return 0
  echo "making layer $name ($key) ..." >&2
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp/root"
  python3 - "$dir.tmp/root" "$kind" <<'PY'
import os, random, sys
root, kind = sys.argv[1], sys.argv[2]
rng = random.Random(42)
if kind == "big":
    os.makedirs(f"{root}/data")
    for i in range(8):
        with open(f"{root}/data/blob{i}", "wb") as f:
            for _ in range(128):
                f.write(os.urandom(1 << 20))
else:
    block = os.urandom(1 << 20)
    for i in range(30000):
        d = f"{root}/data/d{i // 300:03d}"
        os.makedirs(d, exist_ok=True)
        size = rng.randint(0, 8 << 10)
        off = rng.randint(0, (1 << 20) - size)
        with open(f"{d}/f{i:05d}", "wb") as f:
            f.write(block[off:off + size])
PY
  printf '{"key":"%s","name":"%s","buildname":"s1-%s","base_keys":[],"created":%s,"format":1}\n' \
    "$key" "$name" "$name" "$(date +%s)" >"$dir.tmp/meta.json"
  mv "$dir.tmp" "$dir"
}

if [[ $(cat "$BENCH_DIR/.fixture" 2>/dev/null) != "$FIXTURE_VERSION" ]]; then
  rm -rf "$conf/layers" "$base"
  mount_fs
  make_layer big big
  make_layer many many
  unmount_fs
  echo "$FIXTURE_VERSION" >"$BENCH_DIR/.fixture"
fi

# Warm the layers; index both images (first open) and make the baseline file.
find "$conf/layers" -type f -exec cat {} + >/dev/null
mount_fs
cat "$mp/builds/many.tar" >/dev/null
[[ -f $base ]] || cp "$mp/builds/big.tar" "$base"
cmp "$mp/builds/big.tar" "$base" || die "big.tar differs from its copy"
size=$(stat -c %s "$base")
[[ $(stat -c %s "$mp/builds/big.tar") == "$size" ]] || die "size of big.tar is not exact"
# A root daemon writes the image files after the first opens: wait for big.tar's.
image_file=no
if [[ $(id -u) == 0 && " ${MOUNT_ARGS:-} " != *" --no-image-files "* ]]; then
  for _ in $(seq 600); do
    if stat -c %s "$conf"/images/*.tar 2>/dev/null | grep -qx "$size"; then
      image_file=yes
      break
    fi
    sleep 0.1
  done
fi
echo "image file of big.tar (passthrough): $image_file" >&2
unmount_fs
cat "$base" >/dev/null
echo "big.tar: $size bytes; many.tar: $(stat -c %s "$conf"/layers/*/image-*.idx | wc -l) indexes" >&2

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }
run_tool() { # tool file
  case $1 in
    cat) cat "$2" >/dev/null ;;
    cp) cp "$2" /dev/null ;;
  esac
}
# Seconds from open to the first 512 bytes of $1.
first_byte() {
  python3 -c '
import os, sys, time
t = time.perf_counter()
fd = os.open(sys.argv[1], os.O_RDONLY)
assert len(os.pread(fd, 512, 0)) == 512
print(f"{time.perf_counter() - t:.6f}")
os.close(fd)' "$1"
}

printf 'round\tcase\tseconds\n' >"$results"
for ((r = 1; r <= ROUNDS; r++)); do
  for tool in cat cp; do
    mount_fs
    t0=$(now); run_tool "$tool" "$mp/builds/big.tar"; t1=$(now)
    run_tool "$tool" "$mp/builds/big.tar"; t2=$(now)
    run_tool "$tool" "$mp/builds/big.tar"; t2b=$(now)
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$daemon_pid/status")
    unmount_fs
    t3=$(now); run_tool "$tool" "$base"; t4=$(now)
    cat "$base" >"$BENCH_DIR/fresh.tar"; sync "$BENCH_DIR/fresh.tar"
    t5=$(now); run_tool "$tool" "$BENCH_DIR/fresh.tar"; t6=$(now)
    rm -f "$BENCH_DIR/fresh.tar"
    printf '%s\t%s\t%s\n' "$r" "$tool-first" "$(elapsed "$t0" "$t1")" >>"$results"
    printf '%s\t%s\t%s\n' "$r" "$tool-again" "$(elapsed "$t1" "$t2")" >>"$results"
    printf '%s\t%s\t%s\n' "$r" "$tool-warm" "$(elapsed "$t2" "$t2b")" >>"$results"
    printf '%s\t%s\t%s\n' "$r" "$tool-file" "$(elapsed "$t3" "$t4")" >>"$results"
    printf '%s\t%s\t%s\n' "$r" "$tool-fresh" "$(elapsed "$t5" "$t6")" >>"$results"
    printf '%s\t%s\t%s\n' "$r" "rss-kib" "$hwm" >>"$results"
  done
  mount_fs
  printf '%s\t%s\t%s\n' "$r" "first-byte" "$(first_byte "$mp/builds/many.tar")" >>"$results"
  unmount_fs
  echo "round $r done" >&2
done

python3 - "$results" "$size" <<'PY'
import csv, statistics, sys
path, size = sys.argv[1], int(sys.argv[2])
runs = {}
for row in csv.DictReader(open(path), delimiter="\t"):
    runs.setdefault(row["case"], []).append(float(row["seconds"]))
med = {k: statistics.median(v) for k, v in runs.items()}
mib = size / (1 << 20)
print(f"rounds: {len(runs['cat-file'])}; big.tar {size} bytes; median seconds (min..max), MiB/s")
for tool in ["cat", "cp"]:
    for case in ["file", "fresh", "first", "again", "warm"]:
        k = f"{tool}-{case}"
        v = runs[k]
        print(f"  {k:<10} {med[k]:7.3f} s ({min(v):.3f}..{max(v):.3f})  {mib / med[k]:7.0f} MiB/s")
for tool in ["cat", "cp"]:
    for case in ["first", "again", "warm"]:
        r = med[f"{tool}-file"] / med[f"{tool}-{case}"]
        print(f"throughput {tool} builds/big.tar ({case}) / {tool} of the file: {r:.2f}x (target >= 0.9)")
    r = med[f"{tool}-fresh"] / med[f"{tool}-again"]
    print(f"throughput {tool} builds/big.tar (again) / {tool} of a fresh copy (both second touch): {r:.2f}x")
fb = med["first-byte"] * 1000
print(f"first byte of many.tar (30k files) on a fresh mount: {fb:.1f} ms "
      f"({min(runs['first-byte']) * 1000:.1f}..{max(runs['first-byte']) * 1000:.1f}; target < 20 ms)")
rss = max(runs["rss-kib"]) / 1024
print(f"daemon peak RSS (VmHWM) after streaming big.tar three times: {rss:.1f} MiB (max over rounds; target < 100 MiB)")
PY
