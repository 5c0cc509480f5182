# gentree-fs test repository: public domain.
EAPI=8

DESCRIPTION="gentree-fs test: symlinks, a hardlink, setuid/setgid, fowners, long and UTF-8 names, a 4 MiB blob"
HOMEPAGE="https://gentree-fs.invalid/"
S="${WORKDIR}"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"

GT_DIR=/usr/share/gt-special

src_compile() {
	# 4 MiB of deterministic pseudo-random bytes: SHA-256 in counter mode, block i being
	# sha256("gentree-test-blob:<i>") for i = 0..131071 (so printf 'gentree-test-blob:%d' 0 | sha256sum
	# gives the first 32 bytes). Not $RANDOM or awk's rand(), whose sequences differ between versions
	# and implementations. python3 is always there: Portage runs on it.
	python3 -c '
import hashlib, sys
with open(sys.argv[1], "wb") as f:
    for i in range(4 * 1024 * 1024 // 32):
        f.write(hashlib.sha256(b"gentree-test-blob:%d" % i).digest())
' blob.bin || die "cannot generate blob.bin"
	printf '#!/bin/sh\necho "gt-special: %s"\n' suid > gt-suid || die
	printf '#!/bin/sh\necho "gt-special: %s"\n' sgid > gt-sgid || die
}

src_install() {
	local d=${GT_DIR}
	insinto "${d}"
	newins - data.txt <<<"gt-special data"
	doins blob.bin
	newins - empty-file </dev/null

	# symlinks: absolute, relative, dangling
	dosym "${d}/data.txt" "${d}/abs-link"
	dosym data.txt "${d}/rel-link"
	dosym /nonexistent/gt-special-target "${d}/dangling-link"

	# a hardlink pair (same inode, nlink 2)
	newins - hard-a <<<"hardlinked content"
	ln "${ED}${d}/hard-a" "${ED}${d}/hard-b" || die "cannot hardlink hard-b"

	# setuid and setgid executables
	dobin gt-suid gt-sgid
	fperms 4755 /usr/bin/gt-suid
	fperms 2755 /usr/bin/gt-sgid

	# ownership by ids other than root (gtuser 1234, gtgroup 2345)
	keepdir /var/lib/gt-special/owned-dir
	fowners 1234:1234 /var/lib/gt-special/owned-dir
	insinto /var/lib/gt-special
	newins - owned-file <<<"owned by 1234:2345, mode 0640"
	fperms 0640 /var/lib/gt-special/owned-file
	fowners 1234:2345 /var/lib/gt-special/owned-file

	# long names: a 172-character path (without the leading /; fits ustar's prefix+name split),
	# a 124-character file name (needs a GNU long-name or pax header), and a symlink whose
	# target is the 173-character absolute path (over ustar's 100-byte linkname)
	local a b c n
	printf -v a '%060d' 0; a=${a//0/a}
	printf -v b '%060d' 0; b=${b//0/b}
	printf -v c '%09d' 0; c=${c//0/c}
	local long="${d}/long-path/${a}/${b}/long-file-${c}"
	insinto "${long%/*}"
	newins - "${long##*/}" <<<"a file at a 172-character path"
	printf -v n '%099d' 0; n=gt-special-long-name-${n//0/x}.txt
	insinto "${d}"
	newins - "${n}" <<<"a file with a 124-character name"
	dosym "${long}" "${d}/long-target-link"

	# a UTF-8 file name
	newins - "grüße-€-日本.txt" <<<"UTF-8 name"
}

pkg_postinst() {
	# EAPI 8 strips empty directories from the image (strict keepdir), so an empty directory can
	# only come from pkg_postinst: it lands in ROOT without the package owning it.
	mkdir -p "${EROOT}${GT_DIR}/empty-dir" || die
}
