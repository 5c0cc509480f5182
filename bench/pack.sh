#!/usr/bin/env bash
# Benchmark of `gentree-fs pack` against GNU tar and cat (a benchmark, not a test).
#
#   bench/pack.sh [RUNS]        (default 5 runs; set BENCH_DIR to move the work dir)
#
# In one run: builds the release binary, generates a ~1 GiB, ~30k-file tree under
# $BENCH_DIR (default /tmp/gentree-bench; reused when present; measured: 30000 files,
# 1.26 GiB), warms the page cache,
# then times RUNS rounds of
#   gentree-fs pack --layer T -o - | cat >/dev/null
#   tar -cf - -C T . | cat >/dev/null
#   cat T.tar | cat >/dev/null          (an equal-size tar already in the page cache)
# and prints the median time and throughput of each, the ratios, and gentree-fs's
# peak RSS (/usr/bin/time -v "Maximum resident set size"). Targets: >= 1.5x GNU tar's
# throughput, peak RSS < 64 MiB.
set -euo pipefail
runs=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
work=${BENCH_DIR:-/tmp/gentree-bench}
tree=$work/tree
mkdir -p "$work"

(cd "$here" && cargo build --release --quiet)
bin=$here/target/release/gentree-fs

if [[ ! -f $work/.generated ]]; then
  echo "generating $tree ..." >&2
  rm -rf "$tree"
  python3 - "$tree" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
block = os.urandom(1 << 20)
total = 0
n = 30000
for i in range(n):
    d = os.path.join(root, f"d{i // 300:03d}", f"s{(i // 30) % 10}")
    os.makedirs(d, exist_ok=True)
    r = rng.random()
    # Mostly small files, some medium, a few large: ~1 GiB in all.
    size = rng.randint(0, 8 << 10) if r < 0.7 else rng.randint(8 << 10, 64 << 10) if r < 0.95 else rng.randint(256 << 10, 1 << 20)
    off = rng.randint(0, (1 << 20) - 1)
    data = (block[off:] + block[:off])[:size]
    p = os.path.join(d, f"f{i:05d}.bin")
    with open(p, "wb") as f:
        f.write(data)
    total += size
    if i % 500 == 0:
        os.symlink(f"f{i:05d}.bin", p + ".lnk")
print(f"{n} files, {total / (1 << 30):.2f} GiB", file=sys.stderr)
PY
  touch "$work/.generated"
fi

# Warm the page cache and make the equal tar for `cat`.
tar -cf "$work/tree.tar" -C "$tree" .
cat "$work/tree.tar" >/dev/null
size=$(stat -c %s "$work/tree.tar")
gsize=$("$bin" pack --layer "$tree" -o - | wc -c)
echo "tree: $(find "$tree" -type f | wc -l) files; GNU tar $size bytes, gentree-fs tar $gsize bytes" >&2

now() { date +%s.%N; }
declare -A times
for ((r = 1; r <= runs; r++)); do
  t0=$(now); "$bin" pack --layer "$tree" -o - | cat >/dev/null; t1=$(now)
  tar -cf - -C "$tree" . | cat >/dev/null; t2=$(now)
  cat "$work/tree.tar" | cat >/dev/null; t3=$(now)
  times[gentree]+="$(echo "$t1 - $t0" | bc) "
  times[tar]+="$(echo "$t2 - $t1" | bc) "
  times[cat]+="$(echo "$t3 - $t2" | bc) "
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
g=$(echo "${times[gentree]}" | median)
t=$(echo "${times[tar]}" | median)
c=$(echo "${times[cat]}" | median)
rss=$(/usr/bin/time -v "$bin" pack --layer "$tree" -o - 2>&1 >/dev/null | awk -F: '/Maximum resident/ {gsub(/ /, "", $2); print $2}')
mibs() { echo "scale=0; $1 / 1048576 / $2" | bc -l; }
echo "runs: $runs (median seconds; MiB/s of each tool's own output)"
printf '%-10s %8.3f s  %6s MiB/s\n' gentree-fs "$g" "$(mibs "$gsize" "$g")"
printf '%-10s %8.3f s  %6s MiB/s\n' "GNU tar" "$t" "$(mibs "$size" "$t")"
printf '%-10s %8.3f s  %6s MiB/s\n' cat "$c" "$(mibs "$size" "$c")"
echo "throughput gentree-fs / GNU tar: $(echo "scale=2; ($gsize / $g) / ($size / $t)" | bc -l)x (target >= 1.5)"
echo "throughput gentree-fs / cat:     $(echo "scale=2; ($gsize / $g) / ($size / $c)" | bc -l)x"
echo "gentree-fs peak RSS: $((rss / 1024)) MiB ($rss KiB; target < 64 MiB)"
