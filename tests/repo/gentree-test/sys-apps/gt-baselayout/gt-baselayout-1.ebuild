# gentree-fs test repository: public domain.
EAPI=8

DESCRIPTION="gentree-fs test: merged-/usr base layout, passwd, group, os-release (@system)"
HOMEPAGE="https://gentree-fs.invalid/"
S="${WORKDIR}"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"

src_install() {
	# keepdir'd directories (each gets a .keep_sys-apps_gt-baselayout-0 file).
	keepdir /etc /home /root /tmp /var/log /usr/bin /usr/sbin /usr/lib /usr/lib64 /usr/share
	fperms 1777 /tmp
	fperms 0700 /root
	# merged /usr: relative directory symlinks at the top level.
	dosym usr/bin /bin
	dosym usr/sbin /sbin
	dosym usr/lib /lib
	dosym usr/lib64 /lib64

	insinto /etc
	newins - passwd <<-'EOT'
	root:x:0:0:root:/root:/bin/sh
	gtuser:x:1234:1234:gentree-test user:/home/gtuser:/bin/sh
	portage:x:250:250:portage:/var/lib/portage/home:/bin/false
	nobody:x:65534:65534:nobody:/var/empty:/bin/false
	EOT
	newins - group <<-'EOT'
	root:x:0:root
	portage:x:250:portage
	gtuser:x:1234:
	gtgroup:x:2345:
	nogroup:x:65534:
	EOT
	newins - os-release <<-'EOT'
	NAME="gentree-test"
	ID=gentree-test
	PRETTY_NAME="gentree-fs test image"
	EOT
}
