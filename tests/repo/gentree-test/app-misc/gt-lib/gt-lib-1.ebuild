# gentree-fs test repository: public domain.
EAPI=8

DESCRIPTION="gentree-fs test: a library whose upgrade from 1 to 2 removes a file"
HOMEPAGE="https://gentree-fs.invalid/"
S="${WORKDIR}"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"

src_install() {
	insinto /usr/lib/gt-lib
	newins - version.txt <<<"gt-lib ${PV}"
	newins - only-in-v1.txt <<<"this file exists only in gt-lib-1"
	insinto /usr/include/gt-lib
	newins - gt-lib.h <<<"#define GT_LIB_VERSION 1"
}
