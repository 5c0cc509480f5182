# gentree-fs test repository: public domain.
EAPI=8

DESCRIPTION="gentree-fs test: a package whose build always fails (for failure tests)"
HOMEPAGE="https://gentree-fs.invalid/"
S="${WORKDIR}"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"

src_compile() {
	die "gt-fail: src_compile fails on purpose (gentree-fs failure test)"
}

src_install() {
	die "gt-fail: unreachable"
}
