#!/usr/bin/env bash
# Installs the system packages gentree-fs and its tests need (Debian/Ubuntu).
# Run it as root or as a user (it runs itself through sudo then). Safe to run again.
set -euo pipefail
if ((EUID != 0)); then
  command -v sudo >/dev/null || { echo "install-deps.sh: run as root (no sudo here)" >&2; exit 1; }
  exec sudo "$0" "$@"
fi
pkgs=(
  fuse3            # fusermount3 and /etc/fuse.conf, for rootless mounts; mount.fuse3 for
                   # `mount -t fuse.gentree-fs` and fstab
  uidmap           # newuidmap/newgidmap, for rootless builds with a subuid range
  attr             # getfattr/setfattr, used by tests and handy for users
  libarchive-tools # bsdtar: a second tar reader the tests check our output with
  fuse-overlayfs   # reference implementation for the union benchmark
  debootstrap      # builds the test seed (Debian minbase + Portage)
  zstd xz-utils bzip2 gzip tar python3
  python3-pip      # make-test-seed.sh downloads the portage wheel with pip
  strace           # debugging aid for namespace and FUSE problems
  diffoscope-minimal # the reproducibility tests compare two images with it
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Let ordinary users pass allow_other (the build roots need it inside namespaces).
if [[ -f /etc/fuse.conf ]] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
  echo user_allow_other >> /etc/fuse.conf
fi
