# gentree-fs test repository: public domain.
EAPI=8

DESCRIPTION="gentree-fs test: records the mounts the package was merged under"
HOMEPAGE="https://gentree-fs.invalid/"
S="${WORKDIR}"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"

# pkg_preinst runs in the build namespace (not in Portage's own sandboxes) just
# before the merge into ROOT: record the mount table entries of / and of ROOT, so a
# test can check what filesystem the build really ran on.
pkg_preinst() {
	local root=${ROOT%/}
	[[ -n ${root} ]] || root=/
	# mountinfo: mount point is field 5; the file system type follows the "-" field.
	awk -v r="${root}" '$5 == "/" || $5 == r {
		for (i = 7; i <= NF; i++) if ($i == "-") { print $5, $(i + 1), $(i + 2); break }
	}' /proc/self/mountinfo \
		> "${ED}/usr/share/gt-probe/mounts" || die "cannot read the mount table"
}

src_install() {
	insinto /usr/share/gt-probe
	newins - README <<<"gt-probe: mounts lists the mount table entries seen at merge time"
}
