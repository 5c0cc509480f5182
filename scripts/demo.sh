#!/usr/bin/env bash
# The demo in one command: builds the test seed (Debian minbase + the PyPI portage
# wheel; cached), imports it as "testseed", installs the project's ebuild repository
# and the demo configs (demo/configs), then mounts gentree-fs on MOUNTPOINT.
#
#   scripts/demo.sh ~/gentree        # as root, or as a user with sudo
#   cp ~/gentree/builds/hello.tar . && tar -tvf hello.tar
#   fusermount3 -u ~/gentree
#
# Root is needed for debootstrap. Data goes to $GENTREE_CONF_ROOT (default, as
# gentree-fs's own: $XDG_DATA_HOME/gentree if set, else /var/lib/gentree for root and
# ~/.local/share/gentree for a user); the seed cache to $GENTREE_DEMO_CACHE (default
# /var/tmp/gentree-demo-cache).
set -euo pipefail
mp=${1:?usage: scripts/demo.sh MOUNTPOINT}
if ((EUID != 0)); then
  # debootstrap needs root: run the whole demo as root, keeping the caller's PATH
  # (cargo, an installed gentree-fs) and mounting so the caller can use the mount.
  command -v sudo >/dev/null || { echo "demo.sh: run as root (no sudo here)" >&2; exit 1; }
  exec sudo env "PATH=$PATH" "$0" "$@"
fi
here=$(cd "$(dirname "$0")/.." && pwd)
if ((EUID == 0)); then default_data=/var/lib; else default_data=$HOME/.local/share; fi
conf=${GENTREE_CONF_ROOT:-${XDG_DATA_HOME:-$default_data}/gentree}
cache=${GENTREE_DEMO_CACHE:-/var/tmp/gentree-demo-cache}
if command -v gentree-fs >/dev/null; then
  gt=$(command -v gentree-fs)
else
  (cd "$here" && cargo build --release --quiet)
  gt=$here/target/release/gentree-fs
fi
say() { printf 'demo: %s\n' "$*" >&2; }

if [[ ! -x $cache/seed/usr/bin/emerge ]]; then
  say "building the test seed in $cache/seed (about a minute the first time)"
  rm -rf "$cache/seed"
  mkdir -p "$cache"
  "$here/scripts/make-test-seed.sh" "$cache/seed" --cache "$cache/downloads"
fi
if [[ ! -d $conf/seeds/testseed ]]; then
  "$gt" import-seed "$cache/seed" testseed --conf-root "$conf"
fi
mkdir -p "$conf/repos" "$conf/configs"
rm -rf "$conf/repos/gentree-test"
cp -a "$here/tests/repo/gentree-test" "$conf/repos/"
cp -rn "$here/demo/configs/." "$conf/configs/"
mkdir -p "$mp"
if [[ -n ${SUDO_USER:-} ]]; then
  # Started by a user through sudo: let that user (and others) read the mount.
  "$gt" --conf-root "$conf" -o allow_other "$mp"
  say "mounted on $mp: try  cp $mp/builds/hello.tar . && tar -tvf hello.tar"
  say "unmount with  sudo fusermount3 -u $mp"
else
  "$gt" --conf-root "$conf" "$mp"
  say "mounted on $mp: try  cp $mp/builds/hello.tar . && tar -tvf hello.tar"
  say "unmount with  fusermount3 -u $mp"
fi
