#!/usr/bin/env bash
# Creates the unprivileged test user (default gentree-test) with a subuid/subgid range,
# and a second one without (gentree-nosub), so tests can run mounts and builds as
# ordinary users. Root only; idempotent.
set -euo pipefail
user=${GENTREE_TEST_USER:-gentree-test}
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
grep -q "^$user:" /etc/subuid 2>/dev/null || echo "$user:300000:65536" >> /etc/subuid
grep -q "^$user:" /etc/subgid 2>/dev/null || echo "$user:300000:65536" >> /etc/subgid
echo "test user: $user ($(id -u "$user"))"
# A second user with no subordinate ids, for the single-mapping fallback.
nosub=${GENTREE_TEST_NOSUB_USER:-gentree-nosub}
id "$nosub" >/dev/null 2>&1 ||
  useradd --create-home --shell /bin/bash -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 "$nosub"
sed -i "/^$nosub:/d" /etc/subuid /etc/subgid
echo "test user without subids: $nosub ($(id -u "$nosub"))"
# Ordinary users mount FUSE (fusermount3 opens /dev/fuse with the caller's rights);
# containers often pass the device in as 0600. Debian's udev default is 0666.
if [[ -c /dev/fuse ]]; then chmod 0666 /dev/fuse; fi
