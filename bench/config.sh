#!/usr/bin/env bash
# Benchmark of config resolution size scaling (a benchmark, not a test).
#
#   bench/config.sh [RUNS]      (default 5 rounds; set BENCH_DIR to move the work dir)
#
# Generates configs of 20k, 40k and 80k package atoms (one line of atoms, the shape
# that made resolution quadratic) and of 10k/20k/40k `[env]` keys plus as many
# whiteouts, then times `gentree-fs config FILE >/dev/null` in RUNS interleaved
# rounds (every size once per round) and prints each size's median, its ratio to the
# smallest size, and peak RSS. Linear resolution: doubling the size about doubles the
# time (the 4x-size ratio stays near 4, where quadratic gives 16).
set -euo pipefail
runs=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
work=${BENCH_DIR:-/tmp/gentree-bench-config}
mkdir -p "$work"
(cd "$here" && cargo build --release --quiet)
bin=$here/target/release/gentree-fs

python3 - "$work" <<'PY'
import sys
w = sys.argv[1]
for n in (20000, 40000, 80000):
    with open(f"{w}/atoms{n}.toml", "w") as f:
        f.write('seed = "s"\npackages = [' + ",".join(f'"cat{i % 100}/pkg{i}"' for i in range(n)) + "]\n")
for n in (10000, 20000, 40000):
    with open(f"{w}/keys{n}.toml", "w") as f:
        f.write('seed = "s"\nwhiteouts = [' + ",".join(f'"etc/f{i}"' for i in range(n)) + "]\n[env]\n")
        f.writelines(f'V{i} = "x"\n' for i in range(n))
PY

now() { date +%s.%N; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
files="atoms20000 atoms40000 atoms80000 keys10000 keys20000 keys40000"
declare -A times
for ((r = 1; r <= runs; r++)); do
  for f in $files; do
    t0=$(now); "$bin" config "$work/$f.toml" >/dev/null; t1=$(now)
    times[$f]+="$(echo "$t1 - $t0" | bc) "
  done
done
echo "runs: $runs (median seconds of \`gentree-fs config\`, ratio to the smallest of its kind)"
for kind in atoms keys; do
  base=
  for f in $files; do
    [[ $f == $kind* ]] || continue
    m=$(echo "${times[$f]}" | median)
    base=${base:-$m}
    rss=$(/usr/bin/time -v "$bin" config "$work/$f.toml" 2>&1 >/dev/null | awk -F: '/Maximum resident/ {gsub(/ /, "", $2); print $2}')
    printf '%-12s %8.3f s  x%-6s peak RSS %6d KiB\n' "$f" "$m" "$(echo "scale=1; $m / $base" | bc -l)" "$rss"
  done
done
