#!/usr/bin/env bash
# pjdfstest (the Rust port, crates.io `pjdfstest`) against a fresh `gentree-fs union`
# mount, or for comparison against kernel overlayfs or fuse-overlayfs over the same layers.
#
#   cargo build --release && sudo bench/pjdfstest.sh                 # gentree-fs
#   sudo IMPL=overlayfs bench/pjdfstest.sh                            # kernel overlayfs
#   sudo IMPL=fuse-overlayfs bench/pjdfstest.sh
#   sudo bench/pjdfstest.sh chmod rename                              # only these tests
#
# Environment:
#   IMPL         gentree-fs (default), overlayfs or fuse-overlayfs.
#   GENTREE_FS   gentree-fs binary (default target/release/gentree-fs).
#   WORK         scratch dir (default /var/tmp/gentree-pjdfstest); emptied first.
#   PJDFSTEST    the pjdfstest binary; installed with `cargo install pjdfstest` if absent.
#
# Layout: a lower layer with a few files and dirs, an empty upper; pjdfstest runs in a
# fresh directory of the merged view (so everything it creates lives in the upper, and
# the lower layer only shows through the root). As root, with `allow_other`, since the
# suite switches to the dummy users below. Needs the users `nobody` (group `nogroup`)
# and `gentree-test` (scripts/ci-user.sh creates it).
#
# Features: `posix_fallocate`, `utimensat` and `utime_now` are on (the union implements
# them); `chflags`, `file_flags`, `nfsv4_acls`, `stat_st_birthtime` are BSD-only; and
# `rename_ctime` is off because POSIX does not require it (kernel overlayfs over ext4
# happens to update ctime on rename, so it is worth trying by hand).
# Expected failures (the run prints them but does not count them as fatal) are listed in
# the config below, each with its reason: the 40 `::char` cases, which kernel overlayfs
# fails identically. The 14 `*::enametoolong_path` cases pass since host paths over
# PATH_MAX (layer root + merged path) are reached through an open directory's
# /proc/self/fd link (src/layers/union/hostpath.rs).
# Results (2026-11-22, kernel 6.18, pjdfstest 0.2.2, 397 cases):
#   gentree-fs      334 ok, 40 failed (the ::char cases), 23 skipped
#                   (before hostpath.rs: 320 ok, 54 failed, incl. 14 enametoolong_path)
#   overlayfs       334 ok, 40 failed (the ::char cases), 23 skipped
#   fuse-overlayfs  325 ok, 49 failed (40 ::char, 8 enametoolong_component,
#                   unlink::open_file_not_freed), 23 skipped
# (2026-12-04, 398 cases: `utimensat::y2038` passes on both, so it is no longer listed as
# expected to fail.) gentree-fs 335 ok, 40 failed (the ::char cases), 23 skipped;
# overlayfs passes utimensat::y2038 as well.
set -euo pipefail

IMPL=${IMPL:-gentree-fs}
GENTREE_FS=${GENTREE_FS:-target/release/gentree-fs}
WORK=${WORK:-/var/tmp/gentree-pjdfstest}
PJDFSTEST=${PJDFSTEST:-$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")}

die() { echo "pjdfstest.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (the suite switches users): sudo $0"
id gentree-test >/dev/null 2>&1 || die "no user gentree-test: run scripts/ci-user.sh"
if [[ ! -x $PJDFSTEST ]]; then
  echo "== installing pjdfstest (cargo install pjdfstest)"
  cargo install --locked pjdfstest
  PJDFSTEST=$HOME/.cargo/bin/pjdfstest
fi

if mountpoint -q "$WORK/mnt" 2>/dev/null; then umount "$WORK/mnt"; fi
rm -rf "$WORK"
mkdir -p "$WORK"/{lower,upper,work,mnt}
# Some lower content, so the merged root is a real union.
mkdir -p "$WORK/lower/dir/sub"
echo lower >"$WORK/lower/file"
echo lower >"$WORK/lower/dir/sub/file"
ln -s file "$WORK/lower/link"
chmod 0755 "$WORK"/{lower,upper,mnt}

opts="lowerdir=$WORK/lower,upperdir=$WORK/upper,workdir=$WORK/work"
DAEMON=
case $IMPL in
  gentree-fs)
    [[ -x $GENTREE_FS ]] || die "no gentree-fs at $GENTREE_FS (cargo build --release)"
    "$GENTREE_FS" union -f -o "$opts,allow_other" "$WORK/mnt" 2>"$WORK/daemon.log" &
    DAEMON=$! ;;
  fuse-overlayfs)
    fuse-overlayfs -f -o "$opts,allow_other" "$WORK/mnt" 2>"$WORK/daemon.log" &
    DAEMON=$! ;;
  overlayfs)
    mount -t overlay overlay -o "$opts" "$WORK/mnt" ;;
  *) die "IMPL must be gentree-fs, overlayfs or fuse-overlayfs, not $IMPL" ;;
esac
cleanup() {
  if mountpoint -q "$WORK/mnt"; then umount "$WORK/mnt" || umount -l "$WORK/mnt"; fi
  if [[ -n $DAEMON ]]; then wait "$DAEMON" || true; fi
}
trap cleanup EXIT
for ((i = 0; i < 250; i++)); do mountpoint -q "$WORK/mnt" && break; sleep 0.02; done
mountpoint -q "$WORK/mnt" || die "$IMPL did not mount: $(cat "$WORK/daemon.log" 2>/dev/null)"

cat >"$WORK/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}

[settings]
naptime = 0.01
# Remounting read-only (EROFS tests) would need the daemon's cooperation.
allow_remount = false
expected_failures = [
  # pjdfstest makes its character devices with mknod(S_IFCHR, rdev 0): device 0/0 is
  # the overlay whiteout, which kernel overlayfs refuses to create (EPERM) and so does
  # the union. Kernel overlayfs fails exactly these 40 (run with IMPL=overlayfs).
  "chmod::change_perm::char",
  "chmod::enotdir_component::char",
  "chmod::failed_chmod_unchanged_ctime::char",
  "chmod::update_ctime::char",
  "chown::enotdir_component::char",
  "chown::lchown::enotdir_component::char",
  "link::changed_ctime_success::char",
  "link::eexist_dest_exists::char",
  "link::enotdir_component_either::char",
  "link::remove_link::char",
  "link::share_metadata::char",
  "link::unchanged_ctime_fails::char",
  "mkdir::eexist_file_exists::char",
  "mkdir::enotdir_component::char",
  "mkfifo::eexist_file_exists::char",
  "mkfifo::enotdir_component::char",
  "mknod::eexist_file_exists::char",
  "mknod::enotdir_comp_char_block::char",
  "mknod::enotdir_component::char",
  "mknod::privileged::eexist_file_exists::char",
  "open::eexist_file_exists::char",
  "rename::eexist_enotempty_to_non_empty::char",
  "rename::eisdir_to_dir_from_not_dir::char",
  "rename::enotdir_component_either::char",
  "rename::enotdir_from_dir_to_not_dir::char",
  "rename::preserve_metadata::char",
  "rename::to_multiply_linked::char",
  "rename::unchanged_ctime_failed::char",
  "rmdir::eexist_enotempty_non_empty_dir::char",
  "rmdir::enotdir_component::char",
  "symlink::create_symlink::char",
  "symlink::eexist_file_exists::char",
  "symlink::enotdir_component::char",
  "truncate::enotdir_component::char",
  "unlink::enotdir_component::char",
  "unlink::remove_type::char",
  "unlink::unchanged_ctime_failed::char",
  "unlink::update_ctime_success::char",
  "unlink::update_mtime_ctime_success_folder::char",
  "utimensat::changes_timestamps::char",
]

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["gentree-test", "gentree-test"],
]
TOML

mkdir "$WORK/mnt/t"
chmod 0777 "$WORK/mnt/t"
echo "== pjdfstest on $IMPL ($WORK/mnt/t)"
cd "$WORK/mnt/t"
set +e
RUST_BACKTRACE=0 "$PJDFSTEST" -c "$WORK/pjdfstest.toml" -p "$WORK/mnt/t" "$@" 2>&1 | tee "$WORK/result.txt"
rc=${PIPESTATUS[0]}
set -e
cd /
count() { grep -cE " $1\$" "$WORK/result.txt" || true; }
echo "== $IMPL: $(count ok) ok, $(count FAILED) failed, $(count 'failed as expected')" \
  "failed as expected, $(count skipped) skipped" \
  "(full output: $WORK/result.txt)"
grep -E ' FAILED$' "$WORK/result.txt" | awk '{print "   failed:", $1}' || true
exit "$rc"
