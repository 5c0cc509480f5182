#!/usr/bin/env python3
# gentree-fs test repository: public domain.
#
# Tries every way out of the build sandbox that gentree-fs closes, and prints one
# line per attempt: "NAME blocked: WHY" when the attempt failed, "NAME ESCAPED: WHAT"
# when it succeeded. Run as root of the build (pkg_preinst, or `gentree-fs exec`).
# Every write is harmless even where it succeeds: values are written back unchanged.
import errno
import os
import stat
import sys

results = []


def record(name, fn):
    try:
        what = fn()
    except OSError as e:
        results.append(f"{name} blocked: {errno.errorcode.get(e.errno, e.errno)} {e.strerror}")
        return
    if what is None:
        results.append(f"{name} blocked: absent")
    else:
        results.append(f"{name} ESCAPED: {what}")


def open_existing(path, flags):
    """Opens a path that must already be a device (never creates one)."""
    st = os.stat(path)
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        return None  # a plain file in the build's own /dev tmpfs is no device
    fd = os.open(path, flags)
    os.close(fd)
    return f"opened {path}"


def write_kmsg():
    st = os.stat("/dev/kmsg")  # FileNotFoundError: blocked
    if not stat.S_ISCHR(st.st_mode):
        return None
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    os.write(fd, b"gentree-fs escape probe\n")
    os.close(fd)
    return "wrote the kernel log"


def host_block_devices():
    """major:minor of every block device of the host (sysfs lists them all)."""
    try:
        return sorted(os.listdir("/sys/dev/block"))
    except OSError:
        return []


def block_in_dev():
    found = []
    for root, _, files in os.walk("/dev"):
        for f in files:
            p = os.path.join(root, f)
            try:
                if stat.S_ISBLK(os.lstat(p).st_mode):
                    found.append(p)
            except OSError:
                pass
    if not found:
        return None
    for p in found:
        try:
            fd = os.open(p, os.O_RDONLY)
            os.close(fd)
            return f"opened {p}"
        except OSError:
            pass
    raise PermissionError(errno.EACCES, f"block devices listed but none opens: {found}")


def mknod_block(tmp):
    devs = host_block_devices() or ["8:0", "254:0", "7:0"]
    errors = []
    for d in devs:
        major, minor = (int(x) for x in d.split(":"))
        p = os.path.join(tmp, f"blk-{major}-{minor}")
        try:
            os.mknod(p, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
        except OSError as e:
            errors.append(e)
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
            data = os.read(fd, 512)
            os.close(fd)
            return f"read {len(data)} bytes of block device {d}"
        except OSError as e:
            errors.append(e)
        finally:
            os.unlink(p)
    raise errors[0]


def write_repos():
    base = "/var/db/repos"
    repos = sorted(os.listdir(base))
    if not repos:
        return None
    out = []
    for r in repos:
        p = os.path.join(base, r, ".gentree-escape-probe")
        try:
            with open(p, "w") as f:
                f.write("poison\n")
            os.unlink(p)
            out.append(r)
        except OSError as e:
            last = e
    if out:
        return "wrote into " + " ".join(out)
    raise last


def rewrite(path):
    """Writes a kernel setting back with its own value."""
    with open(path) as f:
        value = f.read()
    with open(path, "w") as f:
        f.write(value.split("[")[-1].split("]")[0] if "[" in value else value)
    return f"wrote {path}"


def sysrq():
    if not os.path.exists("/proc/sysrq-trigger"):
        return None
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("h")  # help: only prints to the kernel log
    return "wrote /proc/sysrq-trigger"


def main():
    tmp = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    record("uid-0-is-host-root", lambda: (
        "uid 0 maps to host uid 0"
        if any(l.split()[:2] == ["0", "0"] for l in open("/proc/self/uid_map"))
        else (_ for _ in ()).throw(PermissionError(errno.EPERM, "uid 0 is not host root"))))
    record("write-dev-kmsg", write_kmsg)
    record("open-dev-kvm", lambda: open_existing("/dev/kvm", os.O_RDWR))
    record("open-dev-loop-control", lambda: open_existing("/dev/loop-control", os.O_RDWR))
    record("open-dev-mem", lambda: open_existing("/dev/mem", os.O_RDONLY))
    record("open-block-device-in-dev", block_in_dev)
    record("mknod-block-device-and-read", lambda: mknod_block(tmp))
    record("write-repositories", write_repos)
    record("write-proc-sysrq-trigger", sysrq)
    record("write-proc-sys-hostname", lambda: rewrite("/proc/sys/kernel/hostname"))
    record("write-sys", lambda: rewrite("/sys/kernel/mm/transparent_hugepage/enabled"))
    record("read-proc-kcore", lambda: (
        None if not os.path.exists("/proc/kcore") or os.stat("/proc/kcore").st_size == 0
        else f"/proc/kcore has {os.stat('/proc/kcore').st_size} bytes"))
    for line in results:
        print(line)


main()
