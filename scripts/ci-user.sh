#!/usr/bin/env bash
# Creates the unprivileged test user (default gentree-test) with a subuid/subgid range,
# so tests can run mounts and builds as an ordinary user. Root only; idempotent.
set -euo pipefail
user=${GENTREE_TEST_USER:-gentree-test}
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
grep -q "^$user:" /etc/subuid 2>/dev/null || echo "$user:300000:65536" >> /etc/subuid
grep -q "^$user:" /etc/subgid 2>/dev/null || echo "$user:300000:65536" >> /etc/subgid
echo "test user: $user ($(id -u "$user"))"
# Ordinary users mount FUSE (fusermount3 opens /dev/fuse with the caller's rights);
# containers often pass the device in as 0600. Debian's udev default is 0666.
if [[ -c /dev/fuse ]]; then chmod 0666 /dev/fuse; fi
