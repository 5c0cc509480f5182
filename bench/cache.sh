#!/usr/bin/env bash
# Layer-cache benchmark (a benchmark, not a test), against a real registry: Debian's
# docker-registry on 127.0.0.1 with a temporary storage dir, started here.
#
#   cargo build --release && sudo bench/cache.sh            # both parts
#   sudo PARTS=layer bench/cache.sh                         # only part 1
#   sudo PARTS=fleet ROUNDS=2 bench/cache.sh                # only part 2
#
# 1. layer: one layer of 30,000 files (FILES=) pushed and pulled through the
#    registry by gentree-fs (examples/cache_bench.rs: Cache::push, Cache::fetch),
#    against `skopeo copy` of the same layer tar as an OCI image. Pull is measured
#    twice for skopeo: the download alone (`skopeo copy docker:// oci:`), and the
#    download plus `tar -x` of the layer, which is what gentree-fs's pull does
#    (download, digest check, unpack into the store, publish). Each round uses
#    fresh repositories, so no blob is skipped as already present. Every timed step
#    starts with a cold page cache (drop_caches): gentree-fs reads the layer tree
#    (30k files), skopeo one tar file; "pack-only" is `gentree-fs pack --oci-layer`
#    of the tree to a file, the share of a push that reading the tree costs.
# 2. fleet: four conf roots (fresh copies of one import of the test seed, as four CI
#    machines) building overlapping configs one after another — app, special, app,
#    both (all over the layers base and lib) — with one shared registry cache and
#    without a cache. Reports the layers built (each an emerge run) and the fleet's
#    total wall time.
# skopeo runs with --preserve-digests, so it pushes and pulls the same uncompressed
# tar (by default it would gzip it), and in a mount namespace with an empty tmpfs over
# /var/lib/containers/cache, so its blob-info cache cannot turn a later round's push
# into a cross-repository mount of the first round's blob.
# Rounds are interleaved (the order alternates), medians with min-max spread.
#
# Environment: ROUNDS (5 for layer, 2 for fleet), FILES (30000), GENTREE_FS
# (target/release/gentree-fs), SEED (/var/tmp/gentree-test-cache/seed), BENCH_DIR
# (/var/tmp/gentree-cache-bench, recreated).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PARTS=${PARTS:-layer fleet}
FILES=${FILES:-30000}
GENTREE_FS=${GENTREE_FS:-$here/target/release/gentree-fs}
SEED=${SEED:-/var/tmp/gentree-test-cache/seed}
work=${BENCH_DIR:-/var/tmp/gentree-cache-bench}
die() { echo "cache.sh: $*" >&2; exit 1; }
for t in docker-registry skopeo python3; do
  command -v $t >/dev/null || die "$t is missing (scripts/install-deps.sh)"
done
[[ -x $GENTREE_FS ]] || die "no $GENTREE_FS: cargo build --release"
(cd "$here" && cargo build --release --quiet --example cache_bench)
bench=$here/target/release/examples/cache_bench
rm -rf "$work"; mkdir -p "$work"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: "127.0.0.1:$port", secret: bench}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
trap 'kill $reg_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
reg=127.0.0.1:$port

now() { date +%s.%N; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }  # every op starts cold
mkdir -p /var/lib/containers/cache
skopeo_fresh() {  # skopeo ARGS...: without the blob-info cache of earlier runs
  unshare -m sh -c 'mount -t tmpfs none /var/lib/containers/cache && exec skopeo "$@"' skopeo "$@"
}
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$(now)"; }
summary() {  # summary FILE: per "impl op" the median, min-max, and ratios to skopeo
  python3 - "$1" <<'PY'
import sys, statistics as st, collections
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    impl, op, v = line.split()
    d[(impl, op)].append(float(v))
med = {k: st.median(v) for k, v in d.items()}
for (impl, op), v in sorted(d.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"  {op:22} {impl:10} median {med[(impl, op)]:8.3f}  min {min(v):8.3f}  max {max(v):8.3f}  (n={len(v)})")
for op in sorted({op for _, op in d}):
    base = [k for k in med if k[1] == op and k[0] in ("skopeo", "nocache")]
    for k in med:
        if k[1] == op and base and k != base[0]:
            print(f"  ratio {op}: {k[0]} / {base[0][0]} = {med[k] / med[base[0]]:.2f}")
PY
}

if [[ " $PARTS " == *" layer "* ]]; then
  ROUNDS_L=${ROUNDS:-5}
  key=$(printf 'b%.0s' $(seq 64))
  conf=$work/layer-conf
  root=$conf/layers/$key/root
  mkdir -p "$root"
  python3 - "$root" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    p = os.path.join(root, f"usr/share/p{i % 300}/d{i // 3000}/f{i}")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(os.urandom(64 + (i * 37) % 4096))
PY
  epoch=1700000000
  find "$root" -exec touch -h -d @$epoch {} +
  meta="{\"key\":\"$key\",\"name\":\"bench\",\"buildname\":\"bench-bench\",\"base_keys\":[],\"created\":0,\"format\":1,\"packages\":[]}"
  echo "$meta" > "$conf/layers/$key/meta.json"
  # The same layer tar as an OCI image for skopeo.
  "$GENTREE_FS" pack --oci-layer --layer "$root" -o "$work/layer.tar"
  python3 - "$work/layer.tar" "$work/oci" <<'PY'
import hashlib, json, os, shutil, sys
tar, out = sys.argv[1], sys.argv[2]
os.makedirs(f"{out}/blobs/sha256")
def blob(data=None, path=None):
    if path:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for c in iter(lambda: f.read(1 << 20), b""): h.update(c)
        d = h.hexdigest(); shutil.copy(path, f"{out}/blobs/sha256/{d}"); size = os.path.getsize(path)
    else:
        d = hashlib.sha256(data).hexdigest(); open(f"{out}/blobs/sha256/{d}", "wb").write(data); size = len(data)
    return "sha256:" + d, size
ld, ls = blob(path=tar)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode()
cd, cs = blob(cfg)
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]}).encode()
md, ms = blob(m)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, open(f"{out}/index.json", "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(f"{out}/oci-layout", "w"))
PY
  echo "layer: $FILES files, tar $(( $(stat -c %s "$work/layer.tar") >> 20 )) MiB; $ROUNDS_L rounds, registry $reg"
  res=$work/layer.tsv; : > "$res"
  for r in $(seq "$ROUNDS_L"); do
    g=http://$reg/bench/g$r
    order="gentree skopeo"; (( r % 2 )) || order="skopeo gentree"
    for impl in $order; do
      case $impl in
      gentree)
        cold
        t=$(now); "$GENTREE_FS" pack --oci-layer --layer "$root" -o "$work/pack.tar"
        echo "gentree pack-only $(since "$t")" >> "$res"
        rm -f "$work/pack.tar"
        cold
        echo "gentree push $("$bench" push "$conf" "$key" "$g")" >> "$res"
        pc=$work/pull-$r; mkdir -p "$pc"; echo "$meta" > "$pc/want.json"
        cold
        echo "gentree pull+unpack $("$bench" pull "$pc" "$key" "$g")" >> "$res"
        rm -rf "$pc" ;;
      skopeo)
        cold
        t=$(now); skopeo_fresh copy -q --preserve-digests --dest-tls-verify=false "oci:$work/oci:latest" "docker://$reg/bench/s$r:latest"
        echo "skopeo push $(since "$t")" >> "$res"
        cold
        t=$(now); skopeo_fresh copy -q --preserve-digests --src-tls-verify=false "docker://$reg/bench/s$r:latest" "oci:$work/spull-$r:latest"
        echo "skopeo pull $(since "$t")" >> "$res"
        rm -rf "$work/spull-$r"
        cold
        t=$(now); skopeo_fresh copy -q --preserve-digests --src-tls-verify=false "docker://$reg/bench/s$r:latest" "oci:$work/spull-$r:latest"
        mkdir "$work/x-$r"
        python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/index.json"))["manifests"][0]["digest"].split(":")[1]; print(json.load(open(sys.argv[1]+"/blobs/sha256/"+m))["layers"][0]["digest"].split(":")[1])' "$work/spull-$r" \
          | { read -r l; tar --numeric-owner -xpf "$work/spull-$r/blobs/sha256/$l" -C "$work/x-$r"; }
        echo "skopeo pull+unpack $(since "$t")" >> "$res"
        rm -rf "$work/spull-$r" "$work/x-$r" ;;
      esac
    done
  done
  summary "$res"
fi

if [[ " $PARTS " == *" fleet "* ]]; then
  ROUNDS_F=${ROUNDS:-2}
  [[ -d $SEED/usr ]] || die "no test seed at $SEED: cargo test --test it build makes it"
  tpl=$work/fleet-template
  mkdir -p "$tpl/conf/repos" "$tpl/cfg"
  cp -a "$here/tests/repo/gentree-test" "$tpl/conf/repos/"
  "$GENTREE_FS" import-seed "$SEED" testseed --conf-root "$tpl/conf" >/dev/null
  cd "$tpl/cfg"
  printf 'packages = ["sys-apps/gt-baselayout"]\n[emerge_bools]\noneshot = true\n' > base.toml
  printf 'bases = ["base.toml"]\npackages = ["app-misc/gt-lib"]\n' > lib.toml
  for c in app:'"app-misc/gt-app"' special:'"app-misc/gt-special"' both:'"app-misc/gt-app", "app-misc/gt-special"'; do
    printf 'seed = "testseed"\nbases = ["lib.toml"]\npackages = [%s]\n' "${c#*:}" > "${c%%:*}.toml"
  done
  cd "$here"
  machines=(app special app both)
  echo "fleet: ${#machines[@]} conf roots building ${machines[*]} one after another; $ROUNDS_F rounds"
  res=$work/fleet.tsv; : > "$res"
  fleet() {  # fleet MODE ROUND
    local mode=$1 r=$2 built=0 t i m out
    local cache=() ; [[ $mode == cache ]] && cache=(--cache "http://$reg/bench/fleet$r")
    for i in "${!machines[@]}"; do rm -rf "$work/m$i"; cp -a "$tpl" "$work/m$i"; done
    t=$(now)
    for i in "${!machines[@]}"; do
      m=${machines[$i]}
      out=$("$GENTREE_FS" build --no-config --conf-root "$work/m$i/conf" "${cache[@]}" \
        -o "$work/m$i/image.tar" "$work/m$i/cfg/$m.toml" 2>&1) || { echo "$out" >&2; die "build $m failed"; }
      built=$(( built + $(grep -c '^  built ' <<<"$out" || true) ))
    done
    echo "$mode wall $(since "$t")" >> "$res"
    echo "$mode layers-built $built" >> "$res"
    for i in "${!machines[@]}"; do rm -rf "$work/m$i"; done
  }
  for r in $(seq "$ROUNDS_F"); do
    if (( r % 2 )); then fleet nocache "$r"; fleet cache "$r"; else fleet cache "$r"; fleet nocache "$r"; fi
  done
  summary "$res"
fi
