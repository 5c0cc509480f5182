# gentree-fs test repository: public domain.
EAPI=8

DESCRIPTION="gentree-fs test: tries to escape the build sandbox and records how each attempt ended"
HOMEPAGE="https://gentree-fs.invalid/"
S="${WORKDIR}"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"

# pkg_preinst runs as root in every Portage mode (userpriv or not), in the build's
# namespaces but outside Portage's own sandbox: the strongest a build's code gets.
pkg_preinst() {
	python3 "${FILESDIR}"/escape-probes.py "${T}" > "${ED}/usr/share/gt-escape/results" \
		|| die "the probes did not run"
}

src_install() {
	insinto /usr/share/gt-escape
	newins - README <<<"gt-escape: results lists each sandbox escape attempt and how it ended"
}
