#!/usr/bin/env bash
# Build benchmark (issue 5, "Performance"): the same emerge of the test repository
# (gt-app gt-special gt-docs, from source) by `gentree-fs build --rebuild` on its
# userspace unions, against a plain directory root (a copy of the same seed, chrooted
# with unshare + chroot, `emerge --root /tmp/root`, as scripts/test-seed-smoke.sh does).
# Rounds are interleaved (the order alternates), medians and the ratio are reported.
#
#   cargo build --release && sudo bench/build.sh           # 5 rounds + 1 warm-up
#   sudo ROUNDS=9 bench/build.sh
#   bench/build.sh --report RESULTS.tsv                    # re-print a run's table
#
# Environment:
#   ROUNDS      timed rounds (default 5), after one untimed warm-up round.
#   GENTREE_FS  gentree-fs binary (default target/release/gentree-fs).
#   SEED        the test seed dir (default /var/tmp/gentree-test-cache/seed, made by
#               scripts/make-test-seed.sh; `cargo test --test it build` creates it).
#   BENCH_DIR   work dir (default /var/tmp/gentree-build-bench), recreated each run.
#   GENTREE_FS_BEFORE  a second gentree-fs binary (an older commit, say) timed in the
#               same interleaved rounds as impl "before", with its own conf root, for
#               before/after figures from one run.
#
# What each side times, as one wall-clock interval per round:
#   gentree-fs  `gentree-fs build --rebuild -o IMAGE bench.toml`: namespace set-up, the
#               seed union (persistent upper) as /, the layer union at /builds/<bn>,
#               emerge (Portage's build dirs in /var/tmp on the seed union), publishing
#               the layer and writing the image tar.
#   plain       `unshare --mount --pid --fork`, bind mounts, chroot into the seed copy,
#               rm -rf /tmp/root, then the same emerge argv with --root /tmp/root and
#               the same environment (from `gentree-fs config --json`).
# Both build from source (usepkg off, FEATURES=-buildpkg), so no round reuses another's
# binary packages. The target is gentree-fs <= 1.2x plain.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
GENTREE_FS=${GENTREE_FS:-target/release/gentree-fs}
SEED=${SEED:-/var/tmp/gentree-test-cache/seed}
BENCH_DIR=${BENCH_DIR:-/var/tmp/gentree-build-bench}
ATOMS=(app-misc/gt-app app-misc/gt-special app-misc/gt-docs)

die() { echo "build.sh: $*" >&2; exit 1; }

report() {
  python3 - "$1" <<'EOF'
import csv, statistics, sys
runs = {}
for row in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    runs.setdefault(row["impl"], []).append(float(row["seconds"]))
med = {k: statistics.median(v) for k, v in runs.items()}
print(f"{'impl':<12}{'median s':>10}{'min s':>8}{'max s':>8}  rounds")
for k in ["plain", "before", "gentree-fs"]:
    if k in runs:
        v = runs[k]
        print(f"{k:<12}{med[k]:>10.2f}{min(v):>8.2f}{max(v):>8.2f}  {len(v)}")
if "plain" in med and "gentree-fs" in med and med["plain"] > 0:
    r = med["gentree-fs"] / med["plain"]
    print(f"ratio gentree-fs / plain: {r:.2f}x (target <= 1.20x): {'OK' if r <= 1.2 else 'OVER TARGET'}")
if "plain" in med and "before" in med and med["plain"] > 0:
    print(f"ratio before / plain: {med['before'] / med['plain']:.2f}x; "
          f"gentree-fs / before: {med['gentree-fs'] / med['before']:.2f}x")
EOF
}

# ---- the plain side, inside `unshare --mount --pid --fork` ----
inside() {
  local root=$1 repos=$2 argv_file=$3 env_file=$4
  mount --make-rprivate /
  mount --rbind /dev "$root/dev"
  mount -t proc proc "$root/proc"
  mount --bind "$repos" "$root/var/db/repos"
  local argv=() env=()
  mapfile -t argv < "$argv_file"
  mapfile -t env < "$env_file"
  chroot "$root" /usr/bin/env -i "${env[@]}" /bin/sh -c 'rm -rf /tmp/root && exec "$@"' sh "${argv[@]}"
}

if [[ ${1:-} == --report ]]; then
  report "$2"
  exit
fi
if [[ ${1:-} == --inside ]]; then
  shift
  inside "$@"
  exit
fi

((EUID == 0)) || die "run as root (the plain side chroots; the same build as root on both sides)"
[[ -x $GENTREE_FS ]] || die "no $GENTREE_FS: cargo build --release first"
[[ -x $SEED/usr/bin/emerge ]] || die "no test seed at $SEED (scripts/make-test-seed.sh $SEED)"
GENTREE_FS=$(readlink -f "$GENTREE_FS")
self=$(readlink -f "${BASH_SOURCE[0]}")
repo=$(readlink -f "$(dirname "$self")/../tests/repo/gentree-test")

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR/conf/repos" "$BENCH_DIR/cfg"
conf=$BENCH_DIR/conf plain=$BENCH_DIR/plain results=$BENCH_DIR/results.tsv
cp -a "$repo" "$conf/repos/"
echo "importing the seed, copying it for the plain side"
"$GENTREE_FS" import-seed "$SEED" testseed --conf-root "$conf" >/dev/null
impls=(plain gentree-fs)
if [[ -n ${GENTREE_FS_BEFORE:-} ]]; then
  GENTREE_FS_BEFORE=$(readlink -f "$GENTREE_FS_BEFORE")
  mkdir -p "$BENCH_DIR/conf-before/repos"
  cp -a "$repo" "$BENCH_DIR/conf-before/repos/"
  "$GENTREE_FS_BEFORE" import-seed "$SEED" testseed --conf-root "$BENCH_DIR/conf-before" >/dev/null
  impls=(plain before gentree-fs)
fi
cp -a "$SEED" "$plain"
cfg=$BENCH_DIR/cfg/bench.toml
cat > "$cfg" <<EOF
seed = "testseed"
packages = [$(printf '"%s", ' "${ATOMS[@]}" | sed 's/, $//')]
[emerge_bools]
usepkg = false
[env]
features = "-buildpkg"
EOF

# The plain side's argv and env: the layer's own, with --root /tmp/root.
"$GENTREE_FS" config --no-config --json "$cfg" > "$BENCH_DIR/config.json"
python3 - "$BENCH_DIR" <<'EOF'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/config.json"))
argv = c["emerge"]
i = argv.index("--root")
argv[i + 1] = "/tmp/root"
open(f"{d}/argv", "w").write("\n".join(argv) + "\n")
env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME": "/root", "LANG": "C.UTF-8", "CLEAN_DELAY": "0", "EMERGE_WARNING_DELAY": "0"}
env.update(c["env"])
open(f"{d}/env", "w").write("".join(f"{k}={v}\n" for k, v in env.items()))
EOF
echo "emerge argv: $(tr '\n' ' ' < "$BENCH_DIR/argv")"

run_plain() {
  unshare --mount --pid --fork -- bash "$self" --inside "$plain" "$conf/repos" \
    "$BENCH_DIR/argv" "$BENCH_DIR/env" > "$BENCH_DIR/plain.log" 2>&1 \
    || { tail -n 30 "$BENCH_DIR/plain.log" >&2; die "the plain emerge failed"; }
  [[ -x $plain/tmp/root/usr/bin/gt-app ]] || die "plain: gt-app not installed"
}
run_gentree() {
  "$GENTREE_FS" build --no-config --conf-root "$conf" --rebuild -o "$BENCH_DIR/image.tar" "$cfg" \
    > "$BENCH_DIR/gentree.log" 2>&1 \
    || { tail -n 30 "$BENCH_DIR/gentree.log" >&2; die "gentree-fs build failed"; }
  tar -tf "$BENCH_DIR/image.tar" | grep -cx 'usr/bin/gt-app' >/dev/null || die "gentree-fs: gt-app not in the image"
}
run_before() {
  "$GENTREE_FS_BEFORE" build --no-config --conf-root "$BENCH_DIR/conf-before" --rebuild \
    -o "$BENCH_DIR/image-before.tar" "$cfg" > "$BENCH_DIR/before.log" 2>&1 \
    || { tail -n 30 "$BENCH_DIR/before.log" >&2; die "the before build failed"; }
}
timed() { # impl round
  local t0 t1
  t0=$(date +%s.%N)
  "run_${1/-fs/}"
  t1=$(date +%s.%N)
  local s; s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  if (($2 > 0)); then printf '%s\t%s\t%s\n' "$1" "$2" "$s" >> "$results"; fi
  echo "round $2 $1: $s s"
}

printf 'impl\tround\tseconds\n' > "$results"
for ((r = 0; r <= ROUNDS; r++)); do
  # Rotate which implementation goes first.
  order=("${impls[@]:r % ${#impls[@]}}" "${impls[@]:0:r % ${#impls[@]}}")
  for impl in "${order[@]}"; do timed "$impl" "$r"; done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs; results in $results"
report "$results"
