#!/usr/bin/env bash
# Benchmark of the repository state in layer keys (a benchmark, not a test).
#
#   bench/keys.sh [RUNS]        (default 3; BENCH_DIR moves the work dir)
#
# Generates (once, reused) a synthetic repository the size of ::gentoo under
# $BENCH_DIR/keys/repos/synth: 170 categories, 19000 packages, 30000 ebuilds, with
# metadata.xml, Manifest and files/ patches, metadata/md5-cache (30000 entries), 5000
# profile files, 500 eclasses and 1800 licenses: 147k files. Then, RUNS times,
# with the page cache warm:
#   cold:   no digest cache (state/digest-cache removed): shared digest of the repository,
#           then the digests of 300 package directories (a large image's packages);
#   cached: the same again with the cache the cold run saved;
#   then the same pair for every package directory (what a whole-repository rule
#   would cost), with its own cache.
#   then the package set (closure) of a layer naming 10 packages: the text scan and the
#   digests of its packages.
# A build pays "shared" once per repository directory plus the closure of each layer. Last, the seed identity of the test seed
# (SEED, default /var/tmp/gentree-test-cache/seed, when present), cold and cached.
set -euo pipefail
runs=${1:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
work=${BENCH_DIR:-/tmp/gentree-bench}/keys
repos=$work/repos
(cd "$here" && cargo build --release --quiet --example key_cost)
bin=$here/target/release/examples/key_cost

if [[ ! -f $work/.generated ]]; then
  echo "generating $repos/synth ..." >&2
  rm -rf "$repos"
  python3 - "$repos/synth" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(13)
def w(p, size):
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(("# %s\n" % p) + "x" * size + "\n")
n = 0
cats = [f"cat{i:03d}-misc" for i in range(170)]
w(os.path.join(root, "profiles/repo_name"), 0); open(os.path.join(root, "profiles/repo_name"), "w").write("synth\n")
open(os.path.join(root, "profiles/categories"), "w").write("\n".join(cats) + "\n")
w(os.path.join(root, "metadata/layout.conf"), 40)
w(os.path.join(root, "profiles/default/packages"), 0)
open(os.path.join(root, "profiles/default/packages"), "w").write("".join(f"*{cats[q % 170]}/pkg{q}\n" for q in range(0, 19000, 380)))
for i in range(5000):
    w(os.path.join(root, f"profiles/d{i % 60}/f{i}"), rng.randint(50, 3000)); n += 1
for i in range(500):
    w(os.path.join(root, f"eclass/e{i}.eclass"), rng.randint(1000, 20000)); n += 1
for i in range(1800):
    w(os.path.join(root, f"licenses/L{i}"), rng.randint(500, 8000)); n += 1
ebuilds = 0
for p in range(19000):
    c = cats[p % 170]
    d = os.path.join(root, c, f"pkg{p}")
    k = 1 if p % 19 < 10 else 2 if p % 19 < 17 else 3   # 30000 ebuilds in all
    # Dependencies: a chain towards pkg0 (p // 3) and a few random ones, so a package's
    # set holds a few dozen to a few hundred packages, as on ::gentoo.
    deps = {p // 3, rng.randrange(p)} if p else set()
    if p % 10 == 0 and p:
        deps |= {rng.randrange(p) for _ in range(3)}
    rdepend = " ".join(f">={cats[q % 170]}/pkg{q}-1:=" for q in sorted(deps))
    for v in range(k):
        e = os.path.join(d, f"pkg{p}-{v + 1}.ebuild")
        w(e, rng.randint(500, 3000)); n += 1; ebuilds += 1
        with open(e, "a") as f:
            f.write(f'inherit e{p % 500}\nRDEPEND="{rdepend}"\n')
        w(os.path.join(root, "metadata/md5-cache", c, f"pkg{p}-{v + 1}"), 800); n += 1
    w(os.path.join(d, "metadata.xml"), 300); n += 1
    w(os.path.join(d, "Manifest"), 200); n += 1
    for f in range((3, 3, 2, 2, 1)[p % 5]):
        w(os.path.join(d, "files", f"fix{f}.patch"), rng.randint(300, 5000)); n += 1
print(f"{ebuilds} ebuilds, {n} files", file=sys.stderr)
PY
  touch "$work/.generated"
fi
echo "repository: $(find "$repos/synth" -type f | wc -l) files, $(find "$repos/synth" -name '*.ebuild' | wc -l) ebuilds"
find "$repos" -type f -exec cat {} + > /dev/null   # page cache warm: measure our work, not the disk
for i in $(seq "$runs"); do
  rm -rf "$work/conf" "$work/conf-all"
  echo "300 packages cold   $("$bin" repos "$repos" "$work/conf" 300)"
  echo "300 packages cached $("$bin" repos "$repos" "$work/conf" 300)"
  echo "all packages cold   $("$bin" repos "$repos" "$work/conf-all" all)"
  echo "all packages cached $("$bin" repos "$repos" "$work/conf-all" all)"
  echo "closure of 10 packages $("$bin" closure "$repos" "$work/conf-closure" 10)"
done
seed=${SEED:-/var/tmp/gentree-test-cache/seed}
if [[ -d $seed ]]; then
  rm -rf "$work/seedconf"
  echo "seed $seed: $(find "$seed" | wc -l) entries, $(du -sh "$seed" | cut -f1)"
  echo "seed cold   $("$bin" seed "$seed" "$work/seedconf")"
  echo "seed cached $("$bin" seed "$seed" "$work/seedconf")"
fi
