#!/usr/bin/env bash
# Build benchmark (issues 5 and 18, "Performance"): the same emerge by
# `gentree-fs build --rebuild` on its userspace unions, against a plain directory root
# (a copy of the same seed, chrooted with unshare + chroot, `emerge --root /tmp/root`,
# as scripts/test-seed-smoke.sh does). Rounds are interleaved (the order rotates),
# medians, spread and the ratio are reported per case.
#
#   cargo build --release && sudo bench/build.sh           # 5 rounds + 1 warm-up
#   sudo ROUNDS=9 CASES=small bench/build.sh
#   bench/build.sh --report RESULTS.tsv                    # re-print a run's table
#
# Cases (CASES, default "small compile"):
#   small    gt-app gt-special gt-docs of the test repository on the test seed: no
#            compiler, so mostly Portage's fixed costs (Python and bash start-up, the
#            phases, merging) -- the overhead every layer build pays.
#   compile  bench-misc/gt-liblzma: liblzma of xz 5.8 (the C sources the liblzma-sys
#            crate vendors, found in cargo's registry: ~140 .c files, ~250 .c/.h, a
#            7.5 MiB tree of ~700 files) unpacked, compiled with gcc -O2 by make
#            -j$(nproc) and installed, on the bench seed (the test seed plus gcc, make,
#            libc6-dev: `scripts/make-test-seed.sh --bench`). The ebuild and its
#            Manifest are written into the bench's copy of the test repository, the
#            source tarball into distfiles; nothing of it is in tests/repo.
#
# Environment:
#   ROUNDS      timed rounds (default 5), after one untimed warm-up round.
#   CASES       the cases to run (above).
#   GENTREE_FS  gentree-fs binary (default target/release/gentree-fs).
#   SEED        the test seed dir (default /var/tmp/gentree-test-cache/seed, made by
#               scripts/make-test-seed.sh; `cargo test --test it build` creates it).
#   BENCH_SEED  the bench seed of the compile case (default
#               /var/tmp/gentree-test-cache/bench-seed; made by `sudo
#               scripts/make-test-seed.sh /var/tmp/gentree-test-cache/bench-seed
#               --cache /var/tmp/gentree-test-cache/downloads --bench`).
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
#
# Figures (2 cores shared with three other engineers' builds and tests, kernel 6.18;
# load average 6.5-9 throughout, so wall times vary 25-80% between rounds), issue 18,
# `GENTREE_FS_BEFORE=<the binary before the no-open mode> ROUNDS=4 bench/build.sh`:
#   case     plain    before   gentree-fs   gentree-fs/plain  before/plain  per round
#   small    24.9 s   26.0 s   24.6 s       0.98x             1.04x         0.76-1.25x
#   compile  25.0 s   30.8 s   30.7 s       1.23x             1.23x         0.92-1.81x
# After the merge with main, `CASES=small ROUNDS=3`, load 1.3 rising to 5.3: plain
# 15.0 s, before 14.7 s, gentree-fs 13.7 s: 0.91x plain (per round 0.80-1.15x), 0.93x
# before.
# At that load the build overhead drowns in CPU contention; the same case on a quiet
# machine (last measured before the no-open mode) was plain 5.05 s, gentree-fs 7.01 s.
# On the quiet machine after every branch of the session was merged (load 0.5-2.5, the
# bench alone), `GENTREE_FS_BEFORE=<release binary before the no-open mode> ROUNDS=3
# bench/build.sh`, medians (spread):
#   small    plain 8.15 s (6%)   before 13.50 s (52%)  gentree-fs 11.13 s (22%)
#            gentree-fs/plain 1.37x (per round 1.27-1.50x), before/plain 1.66x, 0.82x before
#   compile  plain 6.79 s (57%)  before 13.85 s (46%)  gentree-fs 12.19 s (45%)
#            gentree-fs/plain 1.79x (per round 1.23-1.79x), before/plain 2.04x, 0.88x before
# So the no-open mode cuts the overhead by about a fifth but the 1.2x target is not met.
# What the change removes is counted exactly by bench/fuse_requests.sh: a small build's
# seed union (/) got 83,179 FUSE requests before (24.5k OPEN, 24.8k RELEASE, 3.3k each
# OPENDIR and RELEASEDIR) and 27,247 after (no OPEN, RELEASE, OPENDIR, RELEASEDIR); what
# remains: 5.6k LOOKUP, 5.3k IOCTL (Python's isatty on every open), 5.7k GETXATTR (the
# kernel's security.capability check before each WRITE), 5.6k WRITE.
# Session of 2026-12-04, the bench alone on the machine (load 1.7-2.0 from the builds
# themselves), `GENTREE_FS_BEFORE=<binary of 24585f6> ROUNDS=5 bench/build.sh`:
#   small    plain 8.49 s (12%)  before 10.10 s (25%)  gentree-fs 9.63 s (34%)
#            gentree-fs/plain 1.13x (per round 1.05-1.39x), before/plain 1.19x
#   compile  plain 6.88 s (60%)  before 8.36 s (77%)   gentree-fs 8.31 s (77%)
#            gentree-fs/plain 1.21x (per round 0.87-1.61x), before/plain 1.21x
# The change between (namespace unions cache entries and misses for good, listings
# always with attributes) cut a small build's seed-union requests from 25.8k to 24.2k
# (LOOKUP 4,212 -> 2,555) with wall time within the noise. What is left: the FUSE
# waits (1.4-1.6 s in all over a 12 s build, bench/fuse_requests.sh; mostly IOCTL,
# GETXATTR and WRITE round trips the kernel sends for every open and first write, at
# 30-60 us each while the build keeps both CPUs busy) and publishing the layer (about
# 0.5 s: the normalising walk, the fsync that makes the layer durable before it is
# visible, replacing the old layer of the same key).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
CASES=${CASES:-small compile}
GENTREE_FS=${GENTREE_FS:-target/release/gentree-fs}
SEED=${SEED:-/var/tmp/gentree-test-cache/seed}
BENCH_SEED=${BENCH_SEED:-/var/tmp/gentree-test-cache/bench-seed}
BENCH_DIR=${BENCH_DIR:-/var/tmp/gentree-build-bench}

die() { echo "build.sh: $*" >&2; exit 1; }

report() {
  python3 - "$1" <<'EOF'
import csv, statistics, sys
runs = {}
for row in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    runs.setdefault(row["case"], {}).setdefault(row["impl"], []).append(float(row["seconds"]))
for case, impls in runs.items():
    med = {k: statistics.median(v) for k, v in impls.items()}
    print(f"case {case}:")
    print(f"  {'impl':<12}{'median s':>10}{'min s':>8}{'max s':>8}{'spread':>8}  rounds")
    for k in ["plain", "before", "gentree-fs"]:
        if k in impls:
            v = impls[k]
            spread = (max(v) - min(v)) / med[k] if med[k] else 0
            print(f"  {k:<12}{med[k]:>10.2f}{min(v):>8.2f}{max(v):>8.2f}{spread:>7.0%}  {len(v)}")
    if "plain" in med and "gentree-fs" in med and med["plain"] > 0:
        r = med["gentree-fs"] / med["plain"]
        # Per-round ratios (each round's gentree-fs over the same round's plain).
        pr = sorted(g / p for g, p in zip(impls["gentree-fs"], impls["plain"]) if p > 0)
        print(f"  ratio gentree-fs / plain: {r:.2f}x (per round {pr[0]:.2f}-{pr[-1]:.2f}x; "
              f"target <= 1.20x): {'OK' if r <= 1.2 else 'OVER TARGET'}")
    if "plain" in med and "before" in med and med["plain"] > 0:
        print(f"  ratio before / plain: {med['before'] / med['plain']:.2f}x; "
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
GENTREE_FS=$(readlink -f "$GENTREE_FS")
self=$(readlink -f "${BASH_SOURCE[0]}")
repo=$(readlink -f "$(dirname "$self")/../tests/repo/gentree-test")

# The compile case's package: liblzma from the xz sources vendored by liblzma-sys.
xz_src() {
  local d
  for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/liblzma-sys-0.4.*/; do
    [[ -f $d/xz/src/liblzma/api/lzma.h ]] && { echo "${d%/}"; return; }
  done
  return 1
}
# add_compile_package REPO DISTDIR: the ebuild, its Manifest and the distfile.
add_compile_package() {
  local repo=$1 distdir=$2 src tmp
  src=$(xz_src) || die "no liblzma-sys 0.4 sources in cargo's registry (cargo fetch in this repository)"
  tmp=$(mktemp -d)
  mkdir "$tmp/gt-liblzma-5.8"
  cp -a "$src/xz" "$src/config.h" "$tmp/gt-liblzma-5.8/"
  # The file list and flags of liblzma-sys's build.rs (no threads, no *_small, no
  # table generators), as a Makefile.
  cat > "$tmp/gt-liblzma-5.8/Makefile" <<'EOF'
DIRS = common lzma lz check delta rangecoder simple
SRCS = $(filter-out %mt.c %_small.c %tablegen.c %crc_clmul_consts_gen.c, \
         $(foreach d,$(DIRS),$(wildcard xz/src/liblzma/$(d)/*.c))) \
       xz/src/common/tuklib_cpucores.c xz/src/common/tuklib_physmem.c
OBJS = $(SRCS:.c=.o)
CPPFLAGS += -DHAVE_CONFIG_H=1 -DNDEBUG -I. -Ixz/src/common \
            $(foreach d,api $(DIRS),-Ixz/src/liblzma/$(d))
liblzma.a: $(OBJS)
	$(AR) rcs $@ $^
%.o: %.c
	$(CC) -std=c99 -O2 $(CFLAGS) $(CPPFLAGS) -c -o $@ $<
EOF
  tar --sort=name --owner=0 --group=0 --mtime=@0 -C "$tmp" -cf "$distdir/gt-liblzma-5.8.tar" gt-liblzma-5.8
  rm -rf "$tmp"
  mkdir -p "$repo/bench-misc/gt-liblzma"
  echo bench-misc >> "$repo/profiles/categories"
  cat > "$repo/bench-misc/gt-liblzma/gt-liblzma-5.8.ebuild" <<'EOF'
EAPI=8
DESCRIPTION="gentree-fs bench: liblzma of xz, a compile-heavy build"
HOMEPAGE="https://tukaani.org/xz/"
SRC_URI="gt-liblzma-${PV}.tar"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"
src_compile() {
	emake -j"$(nproc)" CC=gcc AR=ar
}
src_install() {
	dolib.a liblzma.a
	insinto /usr/include
	doins xz/src/liblzma/api/lzma.h
	doins -r xz/src/liblzma/api/lzma
}
EOF
  python3 - "$distdir/gt-liblzma-5.8.tar" "$repo/bench-misc/gt-liblzma/Manifest" <<'EOF'
import hashlib, os, sys
f, out = sys.argv[1:]
data = open(f, "rb").read()
open(out, "w").write(f"DIST {os.path.basename(f)} {len(data)} BLAKE2B "
                     f"{hashlib.blake2b(data).hexdigest()} SHA512 {hashlib.sha512(data).hexdigest()}\n")
EOF
}

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
results=$BENCH_DIR/results.tsv
impls=(plain gentree-fs)
[[ -n ${GENTREE_FS_BEFORE:-} ]] && impls=(plain before gentree-fs)
[[ -n ${GENTREE_FS_BEFORE:-} ]] && GENTREE_FS_BEFORE=$(readlink -f "$GENTREE_FS_BEFORE")

# setup_case CASE: BENCH_DIR/CASE/{conf,conf-before,plain,cfg,argv,env}.
setup_case() {
  local c=$1 seed atoms dir=$BENCH_DIR/$1 conf
  case $c in
    small) seed=$SEED atoms=(app-misc/gt-app app-misc/gt-special app-misc/gt-docs) ;;
    compile) seed=$BENCH_SEED atoms=(bench-misc/gt-liblzma) ;;
    *) die "unknown case $c (small, compile)" ;;
  esac
  [[ -x $seed/usr/bin/emerge ]] || die "case $c: no seed at $seed (see the header: scripts/make-test-seed.sh)"
  [[ $c != compile || -x $seed/usr/bin/gcc ]] || die "case compile: $seed has no gcc (make-test-seed.sh --bench)"
  mkdir -p "$dir/repos" "$dir/distfiles" "$dir/cfg"
  cp -a "$repo" "$dir/repos/"
  [[ $c == compile ]] && add_compile_package "$dir/repos/gentree-test" "$dir/distfiles"
  echo "case $c: importing $seed, copying it for the plain side"
  local confs=(conf)
  [[ -n ${GENTREE_FS_BEFORE:-} ]] && confs+=(conf-before)
  for conf in "${confs[@]}"; do
    mkdir -p "$dir/$conf"
    cp -a "$dir/repos" "$dir/distfiles" "$dir/$conf/"
    local bin=$GENTREE_FS
    [[ $conf == conf-before ]] && bin=$GENTREE_FS_BEFORE
    "$bin" import-seed "$seed" benchseed --conf-root "$dir/$conf" >/dev/null
  done
  cp -a "$seed" "$dir/plain"
  cp -a "$dir/distfiles/." "$dir/plain/var/cache/distfiles/"
  cat > "$dir/cfg/bench.toml" <<EOF
seed = "benchseed"
packages = [$(printf '"%s", ' "${atoms[@]}" | sed 's/, $//')]
[emerge_bools]
usepkg = false
[env]
features = "-buildpkg"
EOF
  # The plain side's argv and env: the layer's own, with --root /tmp/root.
  "$GENTREE_FS" config --no-config --json "$dir/cfg/bench.toml" > "$dir/config.json"
  python3 - "$dir" <<'EOF'
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
  echo "case $c: emerge argv: $(tr '\n' ' ' < "$dir/argv")"
}

# The file each case's build must have installed.
installed() { case $1 in small) echo usr/bin/gt-app ;; compile) echo usr/lib/liblzma.a ;; esac; }

run_plain() { # case
  local dir=$BENCH_DIR/$1
  unshare --mount --pid --fork -- bash "$self" --inside "$dir/plain" "$dir/repos" \
    "$dir/argv" "$dir/env" > "$dir/plain.log" 2>&1 \
    || { tail -n 30 "$dir/plain.log" >&2; die "$1: the plain emerge failed"; }
  [[ -e $dir/plain/tmp/root/$(installed "$1") ]] || die "$1 plain: $(installed "$1") not installed"
}
run_gentree() { # case [before]
  local dir=$BENCH_DIR/$1 bin=$GENTREE_FS conf=conf name=gentree
  [[ ${2:-} == before ]] && bin=$GENTREE_FS_BEFORE conf=conf-before name=before
  "$bin" build --no-config --conf-root "$dir/$conf" --rebuild -o "$dir/image-$name.tar" \
    "$dir/cfg/bench.toml" > "$dir/$name.log" 2>&1 \
    || { tail -n 30 "$dir/$name.log" >&2; die "$1: $name build failed"; }
  tar -tf "$dir/image-$name.tar" | grep -cx "$(installed "$1")" >/dev/null \
    || die "$1 $name: $(installed "$1") not in the image"
}
run_before() { run_gentree "$1" before; }
timed() { # case impl round
  local t0 t1
  t0=$(date +%s.%N)
  "run_${2/-fs/}" "$1"
  t1=$(date +%s.%N)
  local s; s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  if (($3 > 0)); then printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$s" >> "$results"; fi
  echo "round $3 $1 $2: $s s (load $(cut -d' ' -f1 /proc/loadavg))"
}

for c in $CASES; do setup_case "$c"; done
printf 'case\timpl\tround\tseconds\n' > "$results"
echo "load before: $(uptime)"
for ((r = 0; r <= ROUNDS; r++)); do
  for c in $CASES; do
    # Rotate which implementation goes first.
    order=("${impls[@]:r % ${#impls[@]}}" "${impls[@]:0:r % ${#impls[@]}}")
    for impl in "${order[@]}"; do timed "$c" "$impl" "$r"; done
  done
done
echo "load after: $(uptime); $(nproc) CPUs; results in $results"
report "$results"
