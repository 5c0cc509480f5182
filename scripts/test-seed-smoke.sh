#!/usr/bin/env bash
# Proves that a test seed made by scripts/make-test-seed.sh runs real Portage on the project's
# repository tests/repo/gentree-test, WITHOUT gentree-fs: plain namespaces, bind mounts and chroot.
#
# Usage (as root): scripts/test-seed-smoke.sh SEED [PASS...]
#   PASS is one of:
#     root    unshare --mount --pid --fork, as real root
#     user    as the unprivileged test user (scripts/ci-user.sh creates it):
#             unshare --user --map-root-user --mount --pid --fork (one id mapped)
#     subuid  as the test user with its subuid range: --map-root-user --map-auto, Portage's own
#             portage user (userpriv) and real ownership by other ids
#   Default: root user subuid.
# Each pass binds the repository read-only at /var/db/repos/gentree-test, mounts proc, rbinds /dev,
# puts tmpfs over the seed's scratch directories (so the seed stays unchanged, which is checked), and
# in the chroot emerges into ROOT=/tmp/root: builds, an upgrade, USE changes, an unmerge, a failing
# package, and checks the installed files. Prints "TIMING <pass> <step> <seconds>" lines and a summary.
# Environment: GENTREE_TEST_USER (default gentree-test).
set -euo pipefail

die() { echo "test-seed-smoke: error: $*" >&2; exit 1; }
self=$(readlink -f "${BASH_SOURCE[0]}")

# ---- inside the chroot: the actual test (bash builtins and the seed's tools only) ----
in_chroot() {
  set -euo pipefail
  local R=/tmp/root mode=$GT_MODE log=/tmp/smoke-logs
  mkdir -p "$R" "$log"
  fail() { echo "SMOKE FAIL [$mode]: $*" >&2; exit 1; }
  ok() { echo "SMOKE ok [$mode]: $*"; }
  # em LABEL ARGS...: emerge into $R, output to the terminal and to $log/LABEL.log, timed.
  em() {
    local label=$1; shift
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    emerge --root "$R" --color=n "$@" > "$log/$label.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    sed "s/^/    [$label] /" "$log/$label.log"
    echo "TIMING $mode $label $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
    return "$rc"
  }
  mode_of() { stat -c %a "$R$1"; }
  owner_of() { stat -c %u:%g "$R$1"; }
  expect_file() { [[ -f $R$1 && ! -L $R$1 ]] || fail "missing regular file $1"; }
  expect_absent() { [[ ! -e $R$1 && ! -L $R$1 ]] || fail "$1 should not exist"; }
  expect_link() { [[ -L $R$1 && $(readlink "$R$1") == "$2" ]] || fail "$1 is not a symlink to $2 (is: $(readlink "$R$1" || echo none))"; }
  expect_vdb() { compgen -G "$R/var/db/pkg/$1-[0-9]*" >/dev/null || fail "no vdb entry for $1"; }
  expect_no_vdb() { ! compgen -G "$R/var/db/pkg/$1-[0-9]*" >/dev/null || fail "vdb entry for $1 still there"; }

  # check_special LOGLABEL: gt-special's files as installed into $R
  check_special() {
    local d=/usr/share/gt-special
    [[ $(mode_of /usr/bin/gt-suid) == 4755 ]] || fail "gt-suid mode $(mode_of /usr/bin/gt-suid), expected 4755"
    [[ $(mode_of /usr/bin/gt-sgid) == 2755 ]] || fail "gt-sgid mode $(mode_of /usr/bin/gt-sgid), expected 2755"
    expect_link $d/abs-link $d/data.txt
    expect_link $d/rel-link data.txt
    expect_link $d/dangling-link /nonexistent/gt-special-target
    [[ $(stat -c %i "$R$d/hard-a") == $(stat -c %i "$R$d/hard-b") && $(stat -c %h "$R$d/hard-a") == 2 ]] \
      || fail "hard-a/hard-b are not one inode with 2 links"
    local long=(); mapfile -t long < <(cd "$R" && find usr/share/gt-special/long-path -type f)
    ((${#long[@]} == 1 && ${#long[0]} == 172)) || fail "expected one file at a 172-char path, got: ${long[*]}"
    local name=(); mapfile -t name < <(cd "$R$d" && find . -maxdepth 1 -name 'gt-special-long-name-*')
    ((${#name[@]} == 1 && ${#name[0]} == 2 + 124)) || fail "expected one 124-char file name, got: ${name[*]}"
    expect_link $d/long-target-link "/${long[0]}"
    (($(readlink "$R$d/long-target-link" | wc -c) - 1 > 100)) || fail "long-target-link target not over 100 chars"
    expect_file "$d/grüße-€-日本.txt"
    expect_file $d/empty-file; [[ ! -s $R$d/empty-file ]] || fail "empty-file is not empty"
    [[ -d $R$d/empty-dir && -z $(ls -A "$R$d/empty-dir") ]] || fail "empty-dir missing or not empty"
    # the blob: 4 MiB, SHA-256 counter mode; check blocks 0 and 131071 with coreutils' sha256sum
    [[ $(stat -c %s "$R$d/blob.bin") == 4194304 ]] || fail "blob.bin is not 4 MiB"
    local i want got
    for i in 0 131071; do
      want=$(printf 'gentree-test-blob:%d' "$i" | sha256sum | cut -d' ' -f1)
      got=$(dd if="$R$d/blob.bin" bs=32 skip="$i" count=1 status=none | od -An -v -tx1 | tr -d ' \n')
      [[ $want == "$got" ]] || fail "blob.bin block $i is $got, expected $want"
    done
    echo "RESULT blob-sha256 $(sha256sum < "$R$d/blob.bin" | cut -d' ' -f1)"
    [[ $(mode_of /var/lib/gt-special/owned-file) == 640 ]] || fail "owned-file mode $(mode_of /var/lib/gt-special/owned-file)"
    case $mode in
      root|subuid)
        [[ $(owner_of /var/lib/gt-special/owned-dir) == 1234:1234 ]] || fail "owned-dir owner $(owner_of /var/lib/gt-special/owned-dir), expected 1234:1234"
        [[ $(owner_of /var/lib/gt-special/owned-file) == 1234:2345 ]] || fail "owned-file owner $(owner_of /var/lib/gt-special/owned-file), expected 1234:2345"
        ;;
      user)  # one id mapped: chown to 1234 is EINVAL; the unprivileged wrappers (seed bashrc) ignore it
        if ! grep -q '>>> Emerging binary' "$log/$1.log"; then  # fowners runs only in a build
          grep -q 'chown failure ignored with unprivileged user' "$log/$1.log" \
            || fail "no 'chown failure ignored' warning with a single mapped id"
        fi
        [[ $(owner_of /var/lib/gt-special/owned-dir) == 0:0 ]] || fail "owned-dir owner $(owner_of /var/lib/gt-special/owned-dir), expected 0:0"
        ;;
    esac
    ok "gt-special: setuid/setgid, symlinks, hardlink, long/UTF-8 names, empty file/dir, blob, owners ($(owner_of /var/lib/gt-special/owned-file))"
  }

  echo "uid_map: $(tr -s ' ' < /proc/self/uid_map)"
  emerge --version
  em resolve -p gt-app gt-special || fail "emerge -p gt-app gt-special"

  # @system: merged-/usr layout, passwd/group
  em baselayout -v @system || fail "emerge @system"
  expect_link /bin usr/bin; expect_link /sbin usr/sbin; expect_link /lib usr/lib; expect_link /lib64 usr/lib64
  expect_file /etc/passwd; expect_file /etc/group; expect_file /etc/os-release
  [[ $(mode_of /tmp) == 1777 ]] || fail "/tmp mode $(mode_of /tmp), expected 1777"
  compgen -G "$R/usr/bin/.keep_sys-apps_gt-baselayout-*" >/dev/null || fail "no keepdir file in /usr/bin"
  ok "gt-baselayout: merged-usr symlinks, /etc files, keepdir"

  # gt-lib-1 first, so that the later update is an upgrade
  em gt-lib-1 -v1 =app-misc/gt-lib-1 || fail "emerge =gt-lib-1"
  expect_file /usr/lib/gt-lib/only-in-v1.txt

  # the brief's command: a package with a dependency, and the special-files package
  em app-special -v gt-app gt-special || fail "emerge gt-app gt-special"
  expect_file /usr/bin/gt-app; expect_file /usr/share/gt-app/README; expect_absent /usr/share/gt-app/extras.txt
  check_special app-special

  # upgrade gt-lib 1 -> 2 removes the file only v1 had
  em gt-lib-update -vu gt-lib || fail "emerge -u gt-lib"
  expect_absent /usr/lib/gt-lib/only-in-v1.txt; expect_file /usr/lib/gt-lib/only-in-v2.txt
  [[ $(<"$R/usr/lib/gt-lib/version.txt") == "gt-lib 2" ]] || fail "gt-lib version.txt: $(<"$R/usr/lib/gt-lib/version.txt")"
  expect_vdb app-misc/gt-lib; [[ ! -d $R/var/db/pkg/app-misc/gt-lib-1 ]] || fail "gt-lib-1 still in the vdb"
  ok "gt-lib 1 -> 2 removed only-in-v1.txt"

  # USE=extras: another file, and gt-docs pulled in (with +nls by default)
  USE=extras em app-extras -v gt-app || fail "USE=extras emerge gt-app"
  expect_file /usr/share/gt-app/extras.txt; expect_vdb app-misc/gt-docs
  expect_file /usr/share/man/man1/gt-docs.1.bz2
  expect_file /usr/share/man/de/man1/gt-docs.1.bz2
  expect_file /usr/share/doc/gt-docs-1/README.bz2
  expect_file /usr/share/info/gt-docs.info.bz2
  expect_file /usr/include/gt-docs.h
  expect_file /usr/share/i18n/charmaps/GT-TEST
  expect_file /usr/share/bash-completion/completions/gt-docs
  expect_file /usr/share/locale/de/LC_MESSAGES/gt-docs.mo
  bzip2 -t "$R/usr/share/man/man1/gt-docs.1.bz2" || fail "gt-docs.1.bz2 is not bzip2"
  ok "USE=extras: extras.txt, gt-docs with compressed man (also de)/doc/info, header, charmap, completion, locale"
  USE=-nls em docs-nonls -v1 gt-docs || fail "USE=-nls emerge gt-docs"
  expect_absent /usr/share/locale/de/LC_MESSAGES/gt-docs.mo; expect_file /usr/share/man/man1/gt-docs.1.bz2
  ok "USE=-nls: gt-docs rebuilt without its locale file"

  # --unmerge removes every file, the CONFIG_PROTECTed (unmodified) /etc file included, and the vdb entry
  em removable -v gt-removable || fail "emerge gt-removable"
  local f files=(/usr/bin/gt-removable /usr/share/gt-removable/a.txt /usr/share/gt-removable/b.txt
    /usr/share/gt-removable/sub/c.txt /etc/gt-removable.conf)
  for f in "${files[@]}"; do expect_file "$f"; done
  em unmerge --unmerge gt-removable || fail "emerge --unmerge gt-removable"
  for f in "${files[@]}"; do expect_absent "$f"; done
  expect_absent /usr/share/gt-removable; expect_no_vdb app-misc/gt-removable
  ok "--unmerge gt-removable removed its 5 files, its directory and its vdb entry"

  # a failing build: non-zero exit, the die message in the output, nothing installed
  if em fail -v gt-fail; then fail "emerge gt-fail succeeded"; fi
  grep -q 'gt-fail: src_compile fails on purpose' "$log/fail.log" || fail "the die message is not in emerge's output"
  expect_no_vdb app-misc/gt-fail
  ok "gt-fail fails in src_compile with its message and installs nothing"

  # a binary package (gpkg, with a GNU-format image.tar inside), then a reinstall from it
  em buildpkg -v1 --buildpkg=y gt-special || fail "emerge --buildpkg=y gt-special"
  local gpkg=/var/cache/binpkgs/app-misc/gt-special/gt-special-1-1.gpkg.tar
  [[ -f $gpkg ]] || fail "no binary package $gpkg"
  local members; members=$(tar -tf "$gpkg") || fail "tar cannot list $gpkg"
  grep -qx 'gt-special-1-1/image.tar.zst' <<<"$members" || fail "$gpkg has no image.tar.zst: $members"
  tar -xOf "$gpkg" gt-special-1-1/image.tar.zst | zstd -dcq > /tmp/image.tar || fail "cannot extract image.tar"
  dd if=/tmp/image.tar bs=1 skip=257 count=8 status=none > /tmp/magic
  [[ $(tr -d '\0' < /tmp/magic) == 'ustar  ' ]] || fail "image.tar is not GNU format (magic: $(od -An -c /tmp/magic))"
  em usepkg -v1 --usepkg=y gt-special || fail "emerge --usepkg=y gt-special"
  grep -q '>>> Emerging binary' "$log/usepkg.log" || fail "--usepkg=y did not install the binary package"
  check_special usepkg
  ok "gt-special rebuilt as a gpkg and reinstalled from it"
  echo "SMOKE PASSED [$mode]"
}

# ---- inside the namespaces: mounts, then chroot ----
inside() {
  local mode=$1 seed=$2 repo=$3
  set -euo pipefail
  mount --make-rprivate /
  mount --rbind /dev "$seed/dev"
  mount -t proc proc "$seed/proc"
  mount --bind "$repo" "$seed/var/db/repos/gentree-test"
  mount -o remount,bind,ro "$seed/var/db/repos/gentree-test"
  # Scratch space on tmpfs: the seed itself stays unchanged (and, for the user passes, it is not ours).
  local d
  for d in tmp var/tmp var/cache var/log; do
    mount -t tmpfs -o mode=0755 "gt-$mode" "$seed/$d"
  done
  chmod 1777 "$seed/tmp" "$seed/var/tmp"
  local extra=()
  if [[ $mode == subuid ]]; then
    extra=(PORTAGE_USERNAME=portage PORTAGE_GRPNAME=portage FEATURES="userpriv userfetch")
  fi
  chroot "$seed" /usr/bin/env -i HOME=/tmp TERM=dumb LANG=C.UTF-8 PATH=/usr/sbin:/usr/bin \
    GT_MODE="$mode" "${extra[@]}" /bin/bash -c "$(declare -f in_chroot); in_chroot"
}

if [[ ${1:-} == --inside ]]; then
  shift
  inside "$@"
  exit
fi

# ---- outside, as root ----
(($# >= 1)) || die "usage: $0 SEED [root|user|subuid]..."
((EUID == 0)) || die "must run as root (the root pass, and runuser for the user passes)"
seed=$(readlink -f "$1"); shift
repo=$(readlink -f "$(dirname "$self")/../tests/repo/gentree-test")
passes=("$@"); ((${#passes[@]})) || passes=(root user subuid)
user=${GENTREE_TEST_USER:-gentree-test}
[[ -x $seed/usr/bin/emerge ]] || die "$seed is not a test seed (no usr/bin/emerge); build one with scripts/make-test-seed.sh"
[[ -d $seed/var/db/repos/gentree-test ]] || die "$seed has no /var/db/repos/gentree-test mount point"
[[ -f $repo/profiles/repo_name ]] || die "repository not found at $repo"
for p in "${passes[@]}"; do
  case $p in root|user|subuid) ;; *) die "unknown pass '$p' (root, user or subuid)" ;; esac
  if [[ $p != root ]]; then
    id "$user" >/dev/null 2>&1 || die "test user '$user' missing: run scripts/ci-user.sh first"
    runuser -u "$user" -- test -r "$seed/usr/bin/emerge" -a -r "$repo/profiles/repo_name" \
      || die "user '$user' cannot read $seed or $repo (every parent directory must be searchable)"
  fi
done

# Directory mtimes are left out: Portage creates and removes a lock file next to /var/db/pkg.
snapshot() { find "$seed" -xdev \( -type d -printf '%p %y %m %U:%G\n' \) -o -printf '%p %y %m %U:%G %s %T@\n' | sort; }
before=$(mktemp); after=$(mktemp); logdir=$(mktemp -d)
trap 'rm -f "$before" "$after"; rm -rf "$logdir"' EXIT
snapshot > "$before"

declare -A blob
for p in "${passes[@]}"; do
  echo "=== pass $p"
  t0=$(date +%s.%N)
  case $p in
    root) cmd=(unshare --mount --pid --fork -- bash "$self" --inside root "$seed" "$repo") ;;
    user) cmd=(runuser -u "$user" -- unshare --user --map-root-user --mount --pid --fork --
               bash "$self" --inside user "$seed" "$repo") ;;
    subuid) cmd=(runuser -u "$user" -- unshare --user --map-root-user --map-auto --mount --pid --fork --
                 bash "$self" --inside subuid "$seed" "$repo") ;;
  esac
  echo "+ ${cmd[*]}"
  set +e
  "${cmd[@]}" 2>&1 | tee "$logdir/$p.log"
  rc=${PIPESTATUS[0]}
  set -e
  if ((rc != 0)) || ! grep -q "^SMOKE PASSED \[$p\]" "$logdir/$p.log"; then
    die "pass $p failed (exit $rc); see the output above"
  fi
  echo "TIMING $p total $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')" | tee -a "$logdir/$p.log"
  blob[$p]=$(awk '$1 == "RESULT" && $2 == "blob-sha256" { print $3 }' "$logdir/$p.log" | sort -u)
done

snapshot > "$after"
if ! cmp -s "$before" "$after"; then
  diff "$before" "$after" | head -n 20 >&2
  die "the seed changed during the smoke test (first differences above)"
fi
echo "the seed is unchanged"
if (($(printf '%s\n' "${blob[@]}" | sort -u | wc -l) != 1)); then
  die "blob.bin differs between passes: $(declare -p blob)"
fi
echo "blob.bin is identical in every pass (sha256 ${blob[${passes[0]}]})"
echo "=== timings (seconds)"
cat "$logdir"/*.log | awk '$1 == "TIMING" { printf "%-8s %-16s %s\n", $2, $3, $4 }'
echo "test-seed-smoke: all passes succeeded: ${passes[*]}"
