# gentree-fs test repository: public domain.
EAPI=8

DESCRIPTION="gentree-fs test: a package to remove again with --unmerge (5 files, one in /etc)"
HOMEPAGE="https://gentree-fs.invalid/"
S="${WORKDIR}"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"

src_install() {
	newbin - gt-removable <<<'#!/bin/sh'
	insinto /usr/share/gt-removable
	newins - a.txt <<<"a"
	newins - b.txt <<<"b"
	insinto /usr/share/gt-removable/sub
	newins - c.txt <<<"c"
	insinto /etc
	newins - gt-removable.conf <<<"# gt-removable configuration (CONFIG_PROTECTed)"
}
