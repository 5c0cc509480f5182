# gentree-fs test repository: public domain.
EAPI=8

DESCRIPTION="gentree-fs test: an application with a dependency and a USE flag that changes its files"
HOMEPAGE="https://gentree-fs.invalid/"
S="${WORKDIR}"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"
IUSE="extras"

RDEPEND="
	app-misc/gt-lib
	extras? ( app-misc/gt-docs )
"

src_compile() {
	einfo "gt-app builds as: $(id)"
	cat > gt-app <<-'EOT' || die
	#!/bin/sh
	echo "gt-app: $(cat /usr/lib/gt-lib/version.txt)"
	EOT
}

src_install() {
	dobin gt-app
	insinto /usr/share/gt-app
	newins - README <<<"gt-app, installed by the gentree-fs test repository"
	if use extras; then
		newins - extras.txt <<<"installed because USE=extras"
	fi
}
