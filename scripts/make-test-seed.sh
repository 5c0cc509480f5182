#!/usr/bin/env bash
# Builds the test seed: a Debian bookworm minbase root with real Portage (the PyPI wheel) configured
# for the project's ebuild repository tests/repo/gentree-test and for rootless user namespaces.
# The facts behind each step are in docs/test-seed.md and ../shared/portage-on-debian.md.
#
# Usage: scripts/make-test-seed.sh DEST [--cache DIR] [--bench]
#   DEST         the seed directory to create (must not exist, or be empty)
#   --bench      the bench seed: also a C toolchain (gcc, make, libc6-dev), for the compile-heavy
#                case of bench/build.sh; cached apart from the test seed's debootstrap
#   --cache DIR  keep the debootstrap result (as a tarball keyed by this script's content hash) and
#                the portage wheel in DIR, and reuse them on the next run
# Environment:
#   GENTREE_DEBIAN_MIRROR  Debian mirror URL (default: the bookworm mirror found in the host's apt sources)
#   GENTREE_PORTAGE_VERSION  portage wheel version (default 3.0.83)
# Runs as root (debootstrap needs it). Needs debootstrap, zstd, tar, pip (python3 -m pip) on the host.
set -euo pipefail

script_path=$(readlink -f "${BASH_SOURCE[0]}")
suite=bookworm
portage_version=${GENTREE_PORTAGE_VERSION:-3.0.83}
# Debian packages the seed needs besides minbase (why: docs/test-seed.md).
extra_pkgs=python3,python-is-python3,pax-utils,bzip2,zstd,xz-utils,patch
# With --bench: the compiler and make of bench/build.sh's compile case.
bench_pkgs=gcc,make,libc6-dev

die() { echo "make-test-seed: error: $*" >&2; exit 1; }
log() { echo "make-test-seed: $*" >&2; }
# progress_while PID LOG WHAT: waits for PID, showing what its log says it does (the
# last "I: ..." line of debootstrap) with the elapsed time: one redrawn line on a
# terminal, a plain line every 10 s otherwise. Returns PID's exit status.
progress_while() {
  local pid=$1 logf=$2 what=$3 start=$SECONDS last=-10 step
  while kill -0 "$pid" 2>/dev/null; do
    step=$(grep '^I: ' "$logf" 2>/dev/null | tail -n 1 | cut -c4-80)
    if [[ -t 2 ]]; then
      printf '\rmake-test-seed: %s %3d s: %-70s' "$what" $((SECONDS - start)) "$step" >&2
    elif ((SECONDS - last >= 10)); then
      last=$SECONDS
      log "$what $((SECONDS - start)) s: ${step:-starting}"
    fi
    sleep 1
  done
  [[ -t 2 ]] && printf '\n' >&2
  wait "$pid"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

dest='' cache='' variant=''
while (($#)); do
  case $1 in
    --cache) (($# >= 2)) || die "--cache needs a directory"; cache=$2; shift 2 ;;
    --cache=*) cache=${1#--cache=}; shift ;;
    --bench) variant=bench-; extra_pkgs=$extra_pkgs,$bench_pkgs; shift ;;
    -h|--help) sed -n '2,17p' "$script_path"; exit 0 ;;
    -*) die "unknown option: $1" ;;
    *) [[ -z $dest ]] || die "only one DEST allowed (got '$dest' and '$1')"; dest=$1; shift ;;
  esac
done
[[ -n $dest ]] || die "usage: $0 DEST [--cache DIR]"
((EUID == 0)) || die "must run as root (debootstrap creates device nodes and root-owned files)"
for tool in debootstrap zstd tar python3 chroot sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' not found; run scripts/install-deps.sh"
done
if [[ -e $dest ]] && [[ -n $(ls -A "$dest") ]]; then
  die "DEST '$dest' exists and is not empty; remove it first"
fi
dest=$(readlink -m "$dest")
if [[ -n $cache ]]; then
  mkdir -p "$cache" || die "cannot create cache directory '$cache'"
  cache=$(readlink -f "$cache")
fi

# The Debian mirror the host's apt uses: the first deb source for "$suite" in sources.list(.d), in
# one-line (.list) or deb822 (.sources) format. There is no general internet access here, only that.
find_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk -v suite="$suite" '
      $1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == suite) { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v suite="$suite" '
      function flush() { if (deb && uri != "" && hassuite) print uri; deb = 0; uri = ""; hassuite = 0 }
      /^[ \t]*$/ { flush(); next }
      /^#/ { next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) hassuite = 1 }
      tolower($1) == "enabled:" && tolower($2) == "no" { deb = 0; uri = "" }
      END { flush() }' "$f"
  done
}
mirror=${GENTREE_DEBIAN_MIRROR:-$(find_mirror | head -n1)}
[[ -n $mirror ]] || die "no Debian '$suite' mirror found in /etc/apt/sources.list(.d); set GENTREE_DEBIAN_MIRROR"

t_all=$(now)
partial="$dest.partial.$$"
cleanup() {
  local rc=$?
  if ((rc != 0)) && [[ -d $partial ]]; then
    log "failed; removing the unfinished seed $partial"
    rm -rf --one-file-system "$partial"
  fi
  [[ -z ${tmpdir:-} ]] || rm -rf "$tmpdir"
}
trap cleanup EXIT
tmpdir=$(mktemp -d)
mkdir -p "$partial"

# --- 1. Debian minbase (debootstrap, or the cached tarball of an identical earlier run) ---
key=$(sha256sum "$script_path" | cut -c1-16)
tarball=${cache:+$cache/debootstrap-$variant$suite-$key.tar.zst}
t=$(now)
if [[ -n $tarball && -f $tarball ]]; then
  log "reusing cached debootstrap $tarball"
  zstd -dcq "$tarball" | tar --numeric-owner --xattrs --xattrs-include='*' -xpf - -C "$partial" \
    || die "cannot extract $tarball (delete it to rebuild)"
  log "extracted cached debootstrap in $(since "$t") s"
else
  log "debootstrap --variant=minbase $suite from $mirror (with $extra_pkgs)"
  debootstrap --variant=minbase --include="$extra_pkgs" "$suite" "$partial" "$mirror" \
    > "$tmpdir/debootstrap.log" 2>&1 &
  progress_while $! "$tmpdir/debootstrap.log" "debootstrap" \
    || { tail -n 30 "$tmpdir/debootstrap.log" >&2; die "debootstrap failed (last lines above)"; }
  rm -rf "$partial"/var/cache/apt/archives/*.deb "$partial"/var/lib/apt/lists/*_Packages
  log "debootstrap took $(since "$t") s"
  if [[ -n $tarball ]]; then
    t=$(now)
    for old in "$cache"/debootstrap-"$variant$suite"-*.tar.zst; do
      [[ -e $old ]] && rm -f "$old"
    done
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$partial" -cf - . \
      | zstd -q -T0 -3 -o "$tarball.tmp" || die "cannot write cache tarball $tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    log "cached debootstrap as $tarball in $(since "$t") s"
  fi
fi

# --- 2. The portage wheel from PyPI, downloaded on the host (the seed has no pip) ---
t=$(now)
wheel_dir=${cache:-$tmpdir}
wheel=$wheel_dir/portage-$portage_version-py3-none-any.whl
if [[ ! -f $wheel ]]; then
  python3 -m pip --version >/dev/null 2>&1 \
    || die "the host's python3 has no pip (needed to download the portage wheel): apt-get install python3-pip"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheel_dir" \
    "portage==$portage_version" || die "pip download of portage==$portage_version failed"
  [[ -f $wheel ]] || die "pip did not produce $wheel"
fi
log "portage wheel $wheel ready in $(since "$t") s"

# --- 3. Unpack the wheel into the layout Gentoo uses (a "SYSTEM" install, not pip's "MODULE") ---
t=$(now)
python3 - "$wheel" "$partial" "$portage_version" <<'EOF' || die "unpacking the portage wheel failed"
import os, stat, sys, zipfile

wheel, root, version = sys.argv[1:]
data = f"portage-{version}.data/"
places = [  # (prefix in the wheel, target directory in the seed)
    (f"{data}data/lib/portage/", "usr/lib/portage/"),
    (f"{data}data/share/portage/", "usr/share/portage/"),
    (f"{data}data/etc/", "etc/"),
    (f"{data}scripts/", "usr/bin/"),
    ("portage/tests/", None),  # the test suite is not needed
    ("portage/", "usr/lib/python3/dist-packages/portage/"),
    ("_emerge/", "usr/lib/python3/dist-packages/_emerge/"),
]
count = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.is_dir():
            continue
        for prefix, target in places:
            if info.filename.startswith(prefix):
                break
        else:
            continue  # dist-info
        if target is None:
            continue
        out = os.path.join(root, target + info.filename[len(prefix):])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            sys.exit(f"unexpected symlink in wheel: {info.filename}")
        with z.open(info) as src, open(out, "wb") as dst:
            dst.write(src.read())
        os.chmod(out, 0o755 if mode & 0o111 else 0o644)
        count += 1
    # /usr/bin/<name> -> ../lib/portage/bin/<name> for every console script the wheel declares.
    entry_points = z.read(f"portage-{version}.dist-info/entry_points.txt").decode()
names = []
section = None
for line in entry_points.splitlines():
    line = line.strip()
    if line.startswith("["):
        section = line
    elif section == "[console_scripts]" and "=" in line:
        names.append(line.split("=")[0].strip())
for name in names:
    if not os.path.isfile(os.path.join(root, "usr/lib/portage/bin", name)):
        sys.exit(f"console script {name} has no usr/lib/portage/bin/{name}")
    link = os.path.join(root, "usr/bin", name)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(f"../lib/portage/bin/{name}", link)
print(f"unpacked {count} files, linked {len(names)} commands: {' '.join(names)}", file=sys.stderr)
EOF

pydir=$partial/usr/lib/python3/dist-packages/portage
sed -i 's/^    TYPE = TYPES.MODULE$/    TYPE = TYPES.SYSTEM/' "$pydir/installation.py"
sed -i -e 's|^    PORTAGE_BASE_PATH = """"""$|    PORTAGE_BASE_PATH = """/usr/lib/portage"""|' \
       -e 's|^    PORTAGE_BIN_PATH = """"""$|    PORTAGE_BIN_PATH = """/usr/lib/portage/bin"""|' "$pydir/const.py"
# Both patches must have applied: installation.py must now pick SYSTEM first, const.py must carry the paths.
grep -A1 -x 'if "MODULE" == "MODULE":' "$pydir/installation.py" | grep -qx '    TYPE = TYPES.SYSTEM' \
  || die "patch of portage/installation.py (TYPE = TYPES.SYSTEM) did not apply; the wheel changed"
for want in 'PORTAGE_BASE_PATH = """/usr/lib/portage"""' 'PORTAGE_BIN_PATH = """/usr/lib/portage/bin"""'; do
  grep -qx "    $want" "$pydir/const.py" \
    || die "patch of portage/const.py ($want) did not apply; the wheel changed"
done
# Portage's unpack and xpak code call gtar; Debian has only tar.
ln -sfn tar "$partial/usr/bin/gtar"
# Byte-compile once, so every emerge does not (and read-only seeds need no __pycache__ writes).
chroot "$partial" python3 -m compileall -q -j 0 /usr/lib/python3/dist-packages/portage \
  /usr/lib/python3/dist-packages/_emerge >/dev/null || die "compileall in the seed failed"
log "installed portage $portage_version in $(since "$t") s"

# --- 4. Configuration: repository, profile, rootless defaults ---
t=$(now)
# The global repos.conf names ::gentoo, which does not exist here: every command would warn.
cat > "$partial/usr/share/portage/config/repos.conf" <<'EOF'
# gentree-fs test seed: the only repository is gentree-test (see /etc/portage/repos.conf).
[DEFAULT]
main-repo = gentree-test
EOF
mkdir -p "$partial"/etc/portage/repos.conf "$partial"/var/db/repos/gentree-test "$partial"/var/db/pkg \
  "$partial"/var/cache/distfiles "$partial"/var/cache/binpkgs
# emerge creates /var/lib/portage (2755) in the config root even with --root elsewhere: ship it, so
# a seed used read-only (tmpfs over /tmp, /var/tmp, /var/cache, /var/log) stays unchanged.
install -d -m 2755 "$partial/var/lib/portage"
cat > "$partial/etc/portage/repos.conf/gentree-test.conf" <<'EOF'
[gentree-test]
location = /var/db/repos/gentree-test
EOF
ln -sfn ../../var/db/repos/gentree-test/profiles/default/linux/amd64 "$partial/etc/portage/make.profile"
cat > "$partial/etc/portage/make.conf" <<'EOF'
# gentree-fs test seed. Defaults for a user namespace that maps only one id (uid 0 -> the caller):
# Portage cannot chown to portage (250) there, so it runs builds as root. With a subuid range mapped,
# override in the environment: PORTAGE_USERNAME=portage PORTAGE_GRPNAME=portage FEATURES="userpriv userfetch".
PORTAGE_USERNAME="root"
PORTAGE_GRPNAME="root"
# sandbox: Debian has no sys-apps/sandbox. userfetch: setgroups() fails under --map-root-user.
# userpriv/usersync do nothing when the user is root.
FEATURES="-sandbox -usersandbox -userfetch -userpriv -usersync"
CLEAN_DELAY=0
EMERGE_WARNING_DELAY=0
EOF
cat > "$partial/etc/portage/bashrc" <<'EOF'
# gentree-fs test seed. Sourced by ebuild.sh in the "depend" phase, where external commands are
# fatal ("masked by: corruption"): bash builtins only, and nothing at all in that phase.
# When the user namespace maps exactly one id, chown/chgrp to any other id fails with EINVAL and
# fowners kills the build. Portage's ebuild-helpers/unprivileged wrappers turn that failure into a
# warning, but Portage puts them on PATH only when the uid is not 0, and inside the namespace it is 0.
# This file is sourced only in the first phase of a build (later phases restore the saved
# environment, which keeps functions but not PATH), so it also defines pre_<phase> hooks that put
# the wrappers back on PATH in every later phase.
if [[ ${EBUILD_PHASE} != depend && -r /proc/self/uid_map ]]; then
  __gt_lines=0 __gt_ids=
  while read -r _ _ __gt_count; do  # inside-id outside-id count; read clears __gt_count at EOF
    ((++__gt_lines))
    __gt_ids=${__gt_count}
  done < /proc/self/uid_map
  if [[ ${__gt_lines} == 1 && ${__gt_ids} == 1 ]]; then
    gentree_unprivileged_path() {
      case ":${PATH}:" in
        *":${PORTAGE_BIN_PATH}/ebuild-helpers/unprivileged:"*) ;;
        *) PATH="${PORTAGE_BIN_PATH}/ebuild-helpers/unprivileged:${PATH}" ;;
      esac
    }
    gentree_unprivileged_path
    for __gt_phase in pkg_pretend pkg_setup src_unpack src_prepare src_configure src_compile \
        src_test src_install pkg_preinst pkg_postinst pkg_prerm pkg_postrm pkg_config pkg_info; do
      eval "pre_${__gt_phase}() { gentree_unprivileged_path; }"
    done
    unset __gt_phase
  fi
  unset __gt_lines __gt_count __gt_ids
fi
EOF
# The portage user and group (250), used in the subuid mode (FEATURES=userpriv).
grep -q '^portage:' "$partial/etc/group" || chroot "$partial" groupadd -g 250 portage
grep -q '^portage:' "$partial/etc/passwd" || chroot "$partial" useradd -r -u 250 -g 250 -M \
  -d /var/lib/portage/home -s /usr/sbin/nologin -c "Portage system user" portage
log "configured the seed in $(since "$t") s"

# --- 5. Smoke check without namespaces: Portage loads its config and sees the repository's profile ---
t=$(now)
chroot "$partial" env -i PATH=/usr/sbin:/usr/bin LANG=C.UTF-8 \
  python3 -c 'import portage, portage.const as c; assert c.EPREFIX == "" and c.PORTAGE_BIN_PATH == "/usr/lib/portage/bin", (c.EPREFIX, c.PORTAGE_BIN_PATH); print(portage.VERSION)' \
  > "$tmpdir/version" || die "portage does not import in the seed"
[[ $(<"$tmpdir/version") == "$portage_version" ]] || die "seed's portage reports version $(<"$tmpdir/version"), expected $portage_version"

if [[ -d $dest ]]; then rmdir "$dest" || die "cannot replace the empty directory $dest"; fi
mv -T "$partial" "$dest" || die "cannot move $partial to $dest"
read -r size _ < <(du -sm "$dest")
files=$(find "$dest" -xdev | wc -l)
log "seed ready: $dest (portage $portage_version, $size MiB, $files entries) in $(since "$t_all") s total"
