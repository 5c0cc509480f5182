#!/usr/bin/env bash
# Renaming a lower directory of 10,000 files through a union: `gentree-fs union` (an
# opaque copy of the merged tree under the new name, its files hard-linked, plus a
# whiteout) against mv(1) on kernel overlayfs with redirect_dir=on (a redirect xattr:
# constant time). For reference, the unions that refuse the rename (EXDEV), where mv
# copies the tree and deletes the old one: kernel overlayfs with redirect_dir=off and
# fuse-overlayfs.
#
#   cargo build --release --bins && sudo bench/union_rename.sh      # 7 rounds
#   sudo ROUNDS=11 FILES=20000 bench/union_rename.sh
#
# Environment:
#   ROUNDS      interleaved rounds (default 7); each starts with the next implementation.
#   FILES       files in the renamed lower directory (default 10000, in 10 subdirs).
#   GENTREE_FS  gentree-fs binary (default target/release/gentree-fs).
#   IMPLS       default "overlayfs gentree-fs overlayfs-noredirect fuse-overlayfs".
#   BENCH_DIR   where the RAM filesystem is mounted (default /var/tmp/gentree-rename-bench).
#
# Everything runs on a fresh ext4 in RAM (an image in a private tmpfs, loop-mounted), as
# bench/union.sh does by default: upper, work and lower share it, so gentree-fs links
# rather than copies. Every round and implementation gets fresh upper/work dirs and a
# fresh mount; the time is that of `mv lower/big lower/big2` alone, then the result is
# checked (file count under the new name, none under the old one). The report gives
# medians, min..max spread and the ratio of medians to overlayfs.
set -euo pipefail

ROUNDS=${ROUNDS:-7}
FILES=${FILES:-10000}
GENTREE_FS=${GENTREE_FS:-target/release/gentree-fs}
BENCH_DIR=${BENCH_DIR:-/var/tmp/gentree-rename-bench}
read -r -a IMPLS <<<"${IMPLS:-overlayfs gentree-fs overlayfs-noredirect fuse-overlayfs}"

die() { echo "union_rename.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (kernel overlayfs needs it): sudo $0"
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $FILES =~ ^[1-9][0-9]*$ ]] || die "ROUNDS and FILES must be positive integers"
for t in python3 mkfs.ext4 losetup mountpoint fusermount3; do
  command -v "$t" >/dev/null || die "$t is not installed (scripts/install-deps.sh)"
done
kept=()
for impl in "${IMPLS[@]}"; do
  case $impl in
    overlayfs|overlayfs-noredirect) kept+=("$impl") ;;
    gentree-fs) [[ -x $GENTREE_FS ]] && kept+=("$impl") ||
      echo "!!!! SKIPPING gentree-fs: no binary at $GENTREE_FS (cargo build --release) !!!!" >&2 ;;
    fuse-overlayfs) command -v fuse-overlayfs >/dev/null && kept+=("$impl") ||
      echo "!!!! SKIPPING fuse-overlayfs: not installed !!!!" >&2 ;;
    *) die "unknown implementation $impl" ;;
  esac
done
IMPLS=("${kept[@]}")
[[ ${#IMPLS[@]} -gt 0 ]] || die "no implementation left to run"
[[ ! -x $GENTREE_FS ]] || GENTREE_FS=$(realpath "$GENTREE_FS")

mkdir -p "$BENCH_DIR"
RAM=$(mktemp -d "$BENCH_DIR/ram.XXXXXX")
LOOP=
MNT=
# Unmounts $1, retrying for a second while the loop device's detach finishes, then lazily.
settle_umount() {
  local i
  for ((i = 0; i < 50; i++)); do umount "$1" 2>/dev/null && return 0; sleep 0.02; done
  umount -l "$1"
}
cleanup() {
  set +e
  if [[ -n $MNT ]] && mountpoint -q "$MNT"; then umount -l "$MNT"; fi
  if mountpoint -q "$RAM/ext4"; then settle_umount "$RAM/ext4"; fi
  [[ -z $LOOP ]] || losetup -d "$LOOP"
  if mountpoint -q "$RAM"; then settle_umount "$RAM"; fi
  rmdir "$RAM" 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
mount -t tmpfs -o size=1100m,mode=0700 gentree-rename-bench "$RAM"
truncate -s 1024M "$RAM/ext4.img"
mkfs.ext4 -q -F -i 4096 -O has_journal "$RAM/ext4.img"
LOOP=$(losetup --find --show "$RAM/ext4.img")
mkdir "$RAM/ext4"
mount "$LOOP" "$RAM/ext4"
W=$RAM/ext4
python3 - "$W/lower" "$FILES" <<'EOF'
import os, sys
lower, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = f"{lower}/big/s{i % 10:02d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:05d}", "wb") as f:
        f.write(b"gentree rename bench\n" * ((i * 7919) % 200))
os.makedirs(f"{lower}/other")
EOF
RESULTS=$BENCH_DIR/results-$(date -u +%Y%m%dT%H%M%SZ).tsv
printf 'round\timpl\tseconds\n' >"$RESULTS"

# Mounts $1 over fresh upper/work dirs; sets MNT.
setup() {
  local b=$W/run/$1
  rm -rf "$b"
  mkdir -p "$b"/{upper,work,mnt}
  MNT=$b/mnt
  local o="lowerdir=$W/lower,upperdir=$b/upper,workdir=$b/work"
  case $1 in
    overlayfs) mount -t overlay overlay -o "$o,redirect_dir=on,index=off,metacopy=off" "$MNT" ;;
    overlayfs-noredirect) mount -t overlay overlay -o "$o,redirect_dir=off,index=off,metacopy=off" "$MNT" ;;
    gentree-fs) "$GENTREE_FS" union -o "$o" "$MNT" ;;
    fuse-overlayfs) fuse-overlayfs -o "$o" "$MNT" ;;
  esac
  local i
  for ((i = 0; i < 500; i++)); do mountpoint -q "$MNT" && return 0; sleep 0.02; done
  die "$1 did not mount"
}

echo "== $ROUNDS rounds, renaming a lower directory of $FILES files: ${IMPLS[*]}"
for ((round = 1; round <= ROUNDS; round++)); do
  line="round $round:"
  for ((k = 0; k < ${#IMPLS[@]}; k++)); do
    impl=${IMPLS[(k + round - 1) % ${#IMPLS[@]}]}
    setup "$impl"
    sync
    start=$EPOCHREALTIME
    mv "$MNT/big" "$MNT/big2"
    end=$EPOCHREALTIME
    got=$(find "$MNT/big2" -type f | wc -l)
    [[ $got == "$FILES" && ! -e $MNT/big ]] || die "$impl: $got files under big2 after mv (want $FILES), or big still there"
    umount "$MNT"
    rm -rf "${W:?}/run/$impl"
    secs=$(python3 -c "print(f'{$end - $start:.4f}')")
    printf '%s\t%s\t%s\n' "$round" "$impl" "$secs" >>"$RESULTS"
    line+=" $impl $secs"
  done
  echo "$line"
done
MNT=

python3 - "$RESULTS" "${IMPLS[@]}" <<'EOF'
import csv, statistics, sys
path, impls = sys.argv[1], sys.argv[2:]
runs = {}
for row in csv.DictReader(open(path), delimiter="\t"):
    runs.setdefault(row["impl"], []).append(float(row["seconds"]))
ref = statistics.median(runs["overlayfs"]) if "overlayfs" in runs else None
print(f"\n{'impl':<22}{'median s':>10}{'min..max s':>18}{'vs overlayfs':>14}")
for i in impls:
    v = runs[i]
    m = statistics.median(v)
    r = f"{m / ref:.1f}x" if ref else "-"
    print(f"{i:<22}{m:>10.4f}{f'{min(v):.4f}..{max(v):.4f}':>18}{r:>14}")
print(f"\nresults: {path}")
EOF
