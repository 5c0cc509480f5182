#!/usr/bin/env bash
# Benchmark of layer normalisation and mtime clamping (a benchmark, not a test).
#
#   bench/normalize.sh [CONF_ROOT]   (BENCH_DIR moves the work dir)
#
# 1. The layers of CONF_ROOT (a conf root with built layers, e.g. one left by
#    `gentree-fs build` of the real-Portage test configs): each is copied, every mtime in
#    the copy is set to now (as a fresh build leaves them) and BUILD_TIME is made new,
#    then normalised with the epoch of yesterday; the time is printed per layer.
# 2. A synthetic 30k-file tree with a package database of 300 packages whose CONTENTS
#    list all 30000 files: the same.
# Without CONF_ROOT only part 2 runs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${BENCH_DIR:-/tmp/gentree-bench}/normalize
(cd "$here" && cargo build --release --quiet --example key_cost)
bin=$here/target/release/examples/key_cost
epoch=$(( $(date +%s) - 86400 ))
mkdir -p "$work"
fresh() {  # fresh COPY: every mtime now, BUILD_TIME now
  find "$1" -exec touch -h {} +
  find "$1" -path '*/var/db/pkg/*/*/BUILD_TIME' -exec sh -c 'date +%s > "$1"' _ {} \;
}
if [[ ${1:-} ]]; then
  for l in "$1"/layers/*/root; do
    rm -rf "$work/layer"; cp -a "$l" "$work/layer"; fresh "$work/layer"
    n=$(find "$work/layer" | wc -l)
    echo "layer $(jq -r .buildname "$(dirname "$l")/meta.json" 2>/dev/null || basename "$(dirname "$l")") ($n entries): $("$bin" normalize "$work/layer" "$epoch")"
  done
fi
rm -rf "$work/tree"
python3 - "$work/tree" <<'PY'
import os, sys, hashlib
root = sys.argv[1]
lines = {}
for i in range(30000):
    rel = f"usr/share/p{i % 300}/d{i // 3000}/f{i}"
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(str(i))
    lines.setdefault(i % 300, []).append(f"obj /{rel} {hashlib.md5(str(i).encode()).hexdigest()} 1999999999")
for k, ls in lines.items():
    d = os.path.join(root, f"var/db/pkg/app-misc/p{k}-1")
    os.makedirs(d)
    open(os.path.join(d, "CONTENTS"), "w").write("\n".join(ls) + "\n")
    open(os.path.join(d, "BUILD_TIME"), "w").write("1999999999\n")
    open(os.path.join(d, "BINPKGMD5"), "w").write("0" * 32 + "\n")
PY
echo "synthetic tree ($(find "$work/tree" | wc -l) entries): $("$bin" normalize "$work/tree" "$epoch")"
echo "second pass (nothing to do): $("$bin" normalize "$work/tree" "$epoch")"
