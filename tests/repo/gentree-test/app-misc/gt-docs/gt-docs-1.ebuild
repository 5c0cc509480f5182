# gentree-fs test repository: public domain.
EAPI=8

DESCRIPTION="gentree-fs test: man pages (also /usr/share/man/de), docs, info, headers, charmaps, locales"
HOMEPAGE="https://gentree-fs.invalid/"
S="${WORKDIR}"
LICENSE="public-domain"
SLOT="0"
KEYWORDS="amd64"
IUSE="+nls"

# ecompress leaves files of PORTAGE_DOCOMPRESS_SIZE_LIMIT (128) bytes or less alone:
# pad the sources so the man, info and doc files really get compressed.
gt_padding() {
	local i
	for ((i = 0; i < 6; i++)); do
		echo "${1}padding line ${i}: this text only makes the file larger than 128 bytes"
	done
}

src_compile() {
	{
		echo '.TH GT-DOCS 1 "2026" "gentree-test" "gentree-test manual"'
		echo '.SH NAME'
		echo 'gt-docs \- a manual page of the gentree-fs test repository'
		gt_padding '.\" '
	} > gt-docs.1 || die
	mkdir de || die
	{
		echo '.TH GT-DOCS 1 "2026" "gentree-test" "gentree-test Handbuch"'
		echo '.SH NAME'
		echo 'gt-docs \- eine Handbuchseite des gentree-fs-Testrepositoriums'
		gt_padding '.\" '
	} > de/gt-docs.1 || die
	{ echo "gt-docs README"; gt_padding; } > README || die
	{
		printf 'This is gt-docs.info, produced by hand.\n\n\037\nFile: gt-docs.info,  Node: Top\n\n'
		gt_padding
	} > gt-docs.info || die
	{ echo '#define GT_DOCS 1'; gt_padding '// '; } > gt-docs.h || die
	{
		echo '<code_set_name> GT-TEST'
		echo '<comment_char> %'
		echo 'CHARMAP'
		echo '<U0041> /x41 LATIN CAPITAL LETTER A'
		echo 'END CHARMAP'
	} > GT-TEST || die
	echo 'complete -W "--help --version" gt-docs' > gt-docs.bash || die
	printf '\336\022\004\225gt-docs de catalog\n' > gt-docs.mo || die
}

src_install() {
	doman gt-docs.1
	doman -i18n=de de/gt-docs.1
	dodoc README
	doinfo gt-docs.info
	doheader gt-docs.h
	insinto /usr/share/i18n/charmaps
	doins GT-TEST
	insinto /usr/share/bash-completion/completions
	newins gt-docs.bash gt-docs
	if use nls; then
		insinto /usr/share/locale/de/LC_MESSAGES
		doins gt-docs.mo
	fi
}
