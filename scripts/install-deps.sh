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
  # Real consumers of the OCI images and the registry cache (tests and bench):
  skopeo umoci podman # inspect, copy, unpack and load the OCI image layouts
  docker-registry  # CNCF distribution: the registry the cache tests start on 127.0.0.1
  apache2-utils    # htpasswd, for the registry's basic-auth test
  python3-venv     # a private venv for spdx-tools (below)
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
# spdx-tools (PyPI) validates the SBOMs (`pyspdxtools -i FILE`). Debian has no package
# for it and its Python is externally managed, so it lives in a venv of its own.
spdx_venv=/opt/gentree-fs-ci/spdx-tools
if ! [[ -x $spdx_venv/bin/pyspdxtools ]]; then
  /usr/bin/python3 -m venv "$spdx_venv"
  "$spdx_venv/bin/pip" install -q spdx-tools==0.8.5
fi
ln -sf "$spdx_venv/bin/pyspdxtools" /usr/local/bin/pyspdxtools
