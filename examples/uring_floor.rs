//! The FUSE floor of `examples/fuse_floor.rs`, served over either transport the kernel
//! offers, so `bench/uring.sh` can set FUSE over io_uring against plain /dev/fuse with
//! the same code except the transport.
//!
//! The same read-only workload as `fuse_floor --no-passthrough`: at mount every name,
//! attribute and symlink target of SOURCE is loaded into memory; LOOKUP, GETATTR,
//! READLINK and READDIR(PLUS) are answered from that table with very long TTLs; OPEN
//! opens the host file (`FOPEN_KEEP_CACHE`), READ is a `pread` of it, RELEASE drops it;
//! FLUSH, xattrs and anything else answer ENOSYS. fuser 0.18 does not speak io_uring,
//! so this example speaks the FUSE protocol itself: it opens /dev/fuse, mounts with
//! mount(2) (root only), answers INIT and then serves requests by one of:
//!
//! - `--transport dev`: `--threads N` threads (default: one per CPU), each reading
//!   requests from its own clone of the /dev/fuse fd (`FUSE_DEV_IOC_CLONE`) and writing
//!   replies to it, as fuser and libfuse do.
//! - `--transport uring`: INIT is answered with `FUSE_OVER_IO_URING` in flags2; then
//!   one io_uring (`IORING_SETUP_SQE128`) per possible CPU, its thread pinned to that
//!   CPU (the kernel queues a request on the queue of the CPU the caller runs on), with
//!   `--depth D` ring entries (default 4), each a header buffer and a payload buffer
//!   registered by `FUSE_IO_URING_CMD_REGISTER` (`IORING_OP_URING_CMD`); a completion
//!   carries one request, whose reply goes back, and the entry re-arms, in one
//!   `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`. FORGET and INTERRUPT still come by
//!   /dev/fuse (the kernel does not send them on the ring), so one more thread reads
//!   it. Needs `enable_uring` (`/sys/module/fuse/parameters/enable_uring`, Y) at
//!   INIT, kernel 6.14 or later.
//!
//! ```text
//! cargo build --release --example uring_floor
//! target/release/examples/uring_floor [--transport dev|uring] [--threads N] [--depth D] \
//!     [--no-pin] [--ring plain|coop|defer] [--attr-ttl SECS] SOURCE MOUNTPOINT
//! umount MOUNTPOINT     # the daemon serves in the foreground until then
//! ```
//!
//! `--no-pin` leaves the queue threads to the scheduler; `--ring` picks the io_uring
//! setup flags: none (`plain`, the default, as libfuse), `coop` (SINGLE_ISSUER |
//! COOP_TASKRUN) or `defer` (SINGLE_ISSUER | DEFER_TASKRUN).
//!
//! `--attr-ttl 0` makes every stat a GETATTR round trip (entries keep the long TTL):
//! the bench's per-request latency row. On stderr the daemon prints `serving` once
//! every queue is armed, and at exit the requests it answered, per opcode.
//!
//! Changes to SOURCE after the mount are not seen: this is a benchmark baseline, not a
//! filesystem to use.

// The io_uring transport shares buffers with the kernel (registered ring entries) and
// builds raw submission entries; every `unsafe` block below says why it is sound.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

mod floor_tree;

use floor_tree::at;
use gentree_fs::layers::read_full_at;

/// The tree never changes while mounted (as `fuse_floor`).
const TTL_SECS: u64 = 1_000_000_000;

// FUSE opcodes (include/uapi/linux/fuse.h).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const READLINK: u32 = 5;
const OPEN: u32 = 14;
const READ: u32 = 15;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const GETXATTR: u32 = 22;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const INTERRUPT: u32 = 36;
const BATCH_FORGET: u32 = 42;
const READDIRPLUS: u32 = 44;

// INIT flags: the capabilities `fuse_floor` gets from fuser plus
// `gentree_fs::fs::union::TREE_CAPABILITIES`.
const FUSE_ASYNC_READ: u64 = 1 << 0;
const FUSE_BIG_WRITES: u64 = 1 << 5;
const FUSE_DO_READDIRPLUS: u64 = 1 << 13;
const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
const FUSE_MAX_PAGES: u64 = 1 << 22;
const FUSE_CACHE_SYMLINKS: u64 = 1 << 23;
const FUSE_INIT_EXT: u64 = 1 << 30;
const FUSE_OVER_IO_URING: u64 = 1 << 41;

const FOPEN_KEEP_CACHE: u32 = 1 << 1;
const FOPEN_CACHE_DIR: u32 = 1 << 3;

/// Largest READ reply and READDIR buffer: 1 MiB, as `gentree_fs::fs::request_capabilities`.
const MAX_WRITE: usize = 1 << 20;
const MAX_PAGES: u16 = (MAX_WRITE / 4096) as u16;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// A /dev/fuse read needs room for a WRITE of max_write and its headers.
const DEV_BUF: usize = MAX_WRITE + 4096;

/// `_IOR(229, 0, uint32_t)`: attach a new /dev/fuse fd to the connection of another.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;
const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: in_out[128] (fuse_in_header / fuse_out_header),
/// op_in[128] (the per-opcode header), then `struct fuse_uring_ent_in_out`.
const RING_HEADER: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).map_or(0, |s| {
        u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
    })
}

/// Appends native-endian fields to a reply buffer; `ok` turns false once one did not
/// fit (the caller then drops the partial record).
struct Put<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Put<'_> {
    fn bytes(&mut self, b: &[u8]) -> bool {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
                true
            }
            None => false,
        }
    }
    fn u32(&mut self, v: u32) -> bool {
        self.bytes(&v.to_ne_bytes())
    }
    fn u64(&mut self, v: u64) -> bool {
        self.bytes(&v.to_ne_bytes())
    }
}

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy)]
struct InHeader {
    opcode: u32,
    unique: u64,
    nodeid: u64,
}

impl InHeader {
    fn parse(b: &[u8]) -> Option<Self> {
        (b.len() >= IN_HEADER).then(|| InHeader {
            opcode: u32_at(b, 4),
            unique: u64_at(b, 8),
            nodeid: u64_at(b, 16),
        })
    }
}

/// Size of the per-opcode header that precedes the payload in a /dev/fuse request
/// (over io_uring the kernel puts it in op_in and the rest in the payload buffer).
fn op_header_len(opcode: u32) -> usize {
    match opcode {
        GETATTR => 16,
        OPEN | OPENDIR | GETXATTR | 34 /* ACCESS */ => 8,
        READ | READDIR | READDIRPLUS => 40,
        RELEASE | RELEASEDIR | 25 /* FLUSH */ => 24,
        FORGET | INTERRUPT | BATCH_FORGET => 8,
        _ => 0,
    }
}

/// How a request was answered.
enum Done {
    /// A reply of this many payload bytes.
    Reply(usize),
    /// An error reply (a positive errno).
    Error(i32),
    /// No reply (FORGET, INTERRUPT).
    None,
}

type Node = floor_tree::Node<Metadata>;

/// The filesystem, shared by every serving thread of either transport.
#[derive(Debug)]
struct Floor {
    nodes: Vec<Node>,
    attr_ttl: u64,
    /// The host file of each open handle.
    files: Mutex<HashMap<u64, Arc<File>>>,
    next_fh: AtomicU64,
    /// Requests answered, per opcode.
    counts: Vec<AtomicU64>,
    /// Of those, how many came over io_uring.
    by_ring: AtomicU64,
}

impl Floor {
    fn node(&self, nodeid: u64) -> Option<&Node> {
        self.nodes.get((nodeid as usize).checked_sub(1)?)
    }

    /// `struct fuse_attr` of node `ino`.
    fn put_attr(p: &mut Put<'_>, ino: u64, m: &Metadata) -> bool {
        let nsec = |n: i64| n.clamp(0, 999_999_999) as u32;
        p.u64(ino)
            && p.u64(m.size())
            && p.u64(m.blocks())
            && p.u64(m.atime() as u64)
            && p.u64(m.mtime() as u64)
            && p.u64(m.ctime() as u64)
            && p.u32(nsec(m.atime_nsec()))
            && p.u32(nsec(m.mtime_nsec()))
            && p.u32(nsec(m.ctime_nsec()))
            && p.u32(m.mode())
            && p.u32(m.nlink() as u32)
            && p.u32(m.uid())
            && p.u32(m.gid())
            && p.u32(m.rdev() as u32)
            && p.u32(m.blksize() as u32)
            && p.u32(0)
    }

    /// `struct fuse_entry_out` of `ino` (0: a negative entry, cached as long).
    fn put_entry(&self, p: &mut Put<'_>, ino: u64, m: &Metadata) -> bool {
        p.u64(ino)
            && p.u64(0)
            && p.u64(TTL_SECS)
            && p.u64(self.attr_ttl)
            && p.u32(0)
            && p.u32(0)
            && Self::put_attr(p, ino, m)
    }

    /// `struct fuse_dirent` (READDIR) or `struct fuse_direntplus` (READDIRPLUS), padded
    /// to 8 bytes; false (and nothing added) when it does not fit.
    fn put_dirent(&self, p: &mut Put<'_>, plus: bool, off: u64, name: &[u8], ino: u64) -> bool {
        let start = p.len;
        let Some(n) = self.node(ino) else {
            return true;
        };
        let kind = (n.attr.mode() & libc::S_IFMT) >> 12;
        let pad = (8 - name.len() % 8) % 8;
        let ok = (!plus || self.put_entry(p, ino, &n.attr))
            && p.u64(ino)
            && p.u64(off)
            && p.u32(name.len() as u32)
            && p.u32(kind)
            && p.bytes(name)
            && p.bytes(&[0; 8][..pad]);
        if !ok {
            p.len = start;
        }
        ok
    }

    /// Answers one request: `op` is its per-opcode header, `payload` what follows it,
    /// `out` receives the reply payload.
    fn handle(&self, h: &InHeader, op: &[u8], payload: &[u8], out: &mut [u8]) -> Done {
        if let Some(c) = self.counts.get(h.opcode as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let mut p = Put { buf: out, len: 0 };
        match h.opcode {
            FORGET | BATCH_FORGET | INTERRUPT => return Done::None,
            LOOKUP => {
                let Some(dir) = self.node(h.nodeid) else {
                    return Done::Error(libc::ENOENT);
                };
                let name = payload.split(|&b| b == 0).next().unwrap_or_default();
                match dir.by_name.get(OsStr::from_bytes(name)) {
                    Some(&ino) => match self.node(ino) {
                        Some(n) => self.put_entry(&mut p, ino, &n.attr),
                        None => return Done::Error(libc::ENOENT),
                    },
                    None => self.put_entry(&mut p, 0, &dir.attr),
                };
            }
            GETATTR => {
                let Some(n) = self.node(h.nodeid) else {
                    return Done::Error(libc::ENOENT);
                };
                let _ = p.u64(self.attr_ttl)
                    && p.u32(0)
                    && p.u32(0)
                    && Self::put_attr(&mut p, h.nodeid, &n.attr);
            }
            READLINK => match self.node(h.nodeid).and_then(|n| n.target.as_ref()) {
                Some(t) => {
                    p.bytes(t.as_os_str().as_bytes());
                }
                None => return Done::Error(libc::EINVAL),
            },
            OPEN => {
                if u32_at(op, 0) as i32 & libc::O_ACCMODE != libc::O_RDONLY {
                    return Done::Error(libc::EROFS);
                }
                let Some(n) = self.node(h.nodeid) else {
                    return Done::Error(libc::ENOENT);
                };
                let file = match File::open(&n.host) {
                    Ok(f) => f,
                    Err(e) => return Done::Error(e.raw_os_error().unwrap_or(libc::EIO)),
                };
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.files
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(fh, Arc::new(file));
                let _ = p.u64(fh) && p.u32(FOPEN_KEEP_CACHE) && p.u32(0);
            }
            READ => {
                let (fh, offset, size) = (u64_at(op, 0), u64_at(op, 8), u32_at(op, 16) as usize);
                let file = self
                    .files
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&fh)
                    .cloned();
                let Some(file) = file else {
                    return Done::Error(libc::EBADF);
                };
                let buf = &mut p.buf[..size.min(MAX_WRITE)];
                return match read_full_at(&file, offset, buf) {
                    Ok(got) => Done::Reply(got),
                    Err(e) => Done::Error(e.raw_os_error().unwrap_or(libc::EIO)),
                };
            }
            RELEASE => {
                self.files
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&u64_at(op, 0));
            }
            OPENDIR => match self.node(h.nodeid) {
                Some(n) if n.attr.is_dir() => {
                    let _ = p.u64(0) && p.u32(FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR) && p.u32(0);
                }
                Some(_) => return Done::Error(libc::ENOTDIR),
                None => return Done::Error(libc::ENOENT),
            },
            RELEASEDIR => {}
            READDIR | READDIRPLUS => {
                let Some(dir) = self.node(h.nodeid) else {
                    return Done::Error(libc::ENOENT);
                };
                let (offset, size) = (u64_at(op, 8) as usize, u32_at(op, 16) as usize);
                p.buf = &mut p.buf[..size.min(MAX_WRITE)];
                let dots = [(&b"."[..], h.nodeid), (&b".."[..], dir.parent)];
                let all = dots.into_iter().chain(
                    dir.children
                        .iter()
                        .map(|(name, ino)| (name.as_bytes(), *ino)),
                );
                for (i, (name, ino)) in all.enumerate().skip(offset) {
                    if !self.put_dirent(&mut p, h.opcode == READDIRPLUS, i as u64 + 1, name, ino) {
                        break;
                    }
                }
            }
            STATFS => {
                // struct fuse_kstatfs: counts zero, bsize 4096, namelen 255.
                let _ = p.bytes(&[0; 40])
                    && p.u32(4096)
                    && p.u32(255)
                    && p.u32(4096)
                    && p.bytes(&[0; 28]);
            }
            // FLUSH, GETXATTR, LISTXATTR, ACCESS, STATX...: ENOSYS, after which the
            // kernel stops sending most of them.
            _ => return Done::Error(libc::ENOSYS),
        }
        Done::Reply(p.len)
    }

    fn report(&self) {
        const NAMES: &[(u32, &str)] = &[
            (LOOKUP, "LOOKUP"),
            (FORGET, "FORGET"),
            (GETATTR, "GETATTR"),
            (READLINK, "READLINK"),
            (OPEN, "OPEN"),
            (READ, "READ"),
            (STATFS, "STATFS"),
            (RELEASE, "RELEASE"),
            (OPENDIR, "OPENDIR"),
            (READDIR, "READDIR"),
            (RELEASEDIR, "RELEASEDIR"),
            (READDIRPLUS, "READDIRPLUS"),
            (BATCH_FORGET, "BATCH_FORGET"),
        ];
        let count = |op: u32| self.counts[op as usize].load(Ordering::Relaxed);
        let total: u64 = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let ring = self.by_ring.load(Ordering::Relaxed);
        let mut line = format!(
            "uring_floor: requests {total} (over io_uring {ring}, over /dev/fuse {}):",
            total - ring
        );
        for &(op, name) in NAMES {
            if count(op) > 0 {
                line += &format!(" {name}={}", count(op));
            }
        }
        let named: u64 = NAMES.iter().map(|&(op, _)| count(op)).sum();
        if total > named {
            line += &format!(" other={}", total - named);
        }
        eprintln!("{line}");
    }
}

/// Writes a reply (header, then `out_len` bytes already in `buf[OUT_HEADER..]`).
fn dev_reply(fd: &mut File, buf: &mut [u8], unique: u64, done: Done) -> io::Result<()> {
    let (len, error) = match done {
        Done::None => return Ok(()),
        Done::Reply(n) => (OUT_HEADER + n, 0),
        Done::Error(e) => (OUT_HEADER, -e),
    };
    buf[..4].copy_from_slice(&(len as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&error.to_ne_bytes());
    buf[8..16].copy_from_slice(&unique.to_ne_bytes());
    match fd.write(&buf[..len]) {
        // ENOENT: the request was interrupted and is gone.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(drop),
    }
}

/// Serves requests read from `fd` until the connection ends (ENODEV).
fn serve_dev(floor: &Floor, mut fd: File) -> io::Result<()> {
    let mut inbuf = vec![0u8; DEV_BUF];
    let mut outbuf = vec![0u8; OUT_HEADER + MAX_WRITE];
    loop {
        let n = match fd.read(&mut inbuf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                Some(libc::ENODEV) => return Ok(()),
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                _ => return Err(e),
            },
        };
        let Some(h) = InHeader::parse(&inbuf[..n]) else {
            continue;
        };
        let body = &inbuf[IN_HEADER..n];
        let (op, payload) = body.split_at(op_header_len(h.opcode).min(body.len()));
        let done = floor.handle(&h, op, payload, &mut outbuf[OUT_HEADER..]);
        dev_reply(&mut fd, &mut outbuf, h.unique, done)?;
    }
}

/// A new /dev/fuse fd attached to the connection of `fd`.
fn clone_dev(fd: &File) -> io::Result<File> {
    let new = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let mut src: u32 = fd.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the source fd) from the pointer, which
    // points to a live local; `new` is an open /dev/fuse fd.
    let rc = unsafe { libc::ioctl(new.as_raw_fd(), FUSE_DEV_IOC_CLONE, &mut src) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(new)
}

/// A buffer shared with the kernel while registered: a raw allocation, so no Rust
/// reference to it exists while the kernel may write it.
struct KernelBuf {
    ptr: *mut u8,
    len: usize,
}

impl KernelBuf {
    fn new(len: usize) -> Self {
        let ptr = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
        KernelBuf { ptr, len }
    }

    /// The whole buffer.
    ///
    /// SAFETY (for callers): only while the kernel does not access the buffer, i.e.
    /// between the completion that hands the entry to userspace and the submission of
    /// its COMMIT_AND_FETCH.
    unsafe fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` holds `len` initialised bytes (a zeroed boxed slice); `&mut
        // self` rules out another slice of it, the caller's contract the kernel.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for KernelBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from Box::into_raw of a boxed slice of `len` bytes, and
        // the ring that shared it was dropped first (see `serve_queue`).
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
    }
}

/// One ring entry: its `fuse_uring_req_header`, its payload buffer, and the iovec
/// pair REGISTER hands to the kernel.
struct RingEnt {
    header: KernelBuf,
    payload: KernelBuf,
    iov: Box<[libc::iovec; 2]>,
}

/// A `fuse_uring_cmd_req` in the 80-byte command area of a 128-byte SQE.
fn uring_cmd(fd: RawFd, cmd_op: u32, commit_id: u64, qid: u16, user_data: u64) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .build()
        .user_data(user_data)
}

/// The REGISTER command of `ent`: sqe->addr points to its two iovecs, sqe->len = 2.
fn register_cmd(fd: RawFd, qid: u16, index: u64, ent: &RingEnt) -> squeue::Entry128 {
    let sqe = uring_cmd(fd, FUSE_IO_URING_CMD_REGISTER, 0, qid, index);
    // io-uring's UringCmd80 sets addr but not len, so the length goes in by hand at
    // its place in `struct io_uring_sqe` (u32 at byte 24; addr: u64 at byte 16).
    // SAFETY: Entry128 is repr(C) of the 64-byte io_uring_sqe and 64 command bytes,
    // plain integers in which every bit pattern is valid, 128 bytes in all.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[16..24].copy_from_slice(&(ent.iov.as_ptr() as u64).to_ne_bytes());
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above, back to the same type.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// A ring for queue `qid` with every entry of `ents` submitted for REGISTER (the
/// kernel's verdict comes as their completions).
fn arm(
    fd: RawFd,
    qid: u16,
    ents: &[RingEnt],
    setup: RingSetup,
) -> io::Result<IoUring<squeue::Entry128, cqueue::Entry>> {
    let mut builder = IoUring::builder();
    match setup {
        RingSetup::Plain => {}
        // Only this thread submits and waits: the kernel may skip the locking and
        // the interrupts that a ring shared between threads needs.
        RingSetup::Coop => {
            builder.setup_single_issuer().setup_coop_taskrun();
        }
        // Kernel work for the ring (handing a request to an entry) runs only when
        // this thread waits for completions.
        RingSetup::Defer => {
            builder.setup_single_issuer().setup_defer_taskrun();
        }
    }
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> =
        builder.build((2 * ents.len()) as u32)?;
    for (i, ent) in ents.iter().enumerate() {
        let sqe = register_cmd(fd, qid, i as u64, ent);
        // SAFETY: the iovecs and the buffers they name live in `ents`, which the
        // caller keeps until after the ring is dropped.
        unsafe { ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("submission queue full"))?;
    }
    ring.submit()?;
    Ok(ring)
}

/// Serves queue `qid` of the connection of `fd` on its own io_uring until the
/// connection ends. `armed` is waited on once every entry is registered.
fn serve_queue(
    floor: &Floor,
    fd: &File,
    qid: u16,
    opts: QueueOpts,
    armed: &Barrier,
) -> io::Result<()> {
    let mut cpus = nix::sched::CpuSet::new();
    if opts.pin && cpus.set(qid as usize).is_ok() {
        // The kernel picks the queue of the CPU the caller runs on; its thread waits
        // there (libfuse pins the same way). Failure only costs locality.
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus);
    }
    // Declared before the ring, so dropped after it: the kernel holds them until the
    // ring is gone.
    let mut ents: Vec<RingEnt> = (0..opts.depth)
        .map(|_| {
            let header = KernelBuf::new(RING_HEADER);
            let payload = KernelBuf::new(MAX_WRITE);
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.ptr.cast(),
                    iov_len: header.len,
                },
                libc::iovec {
                    iov_base: payload.ptr.cast(),
                    iov_len: payload.len,
                },
            ]);
            RingEnt {
                header,
                payload,
                iov,
            }
        })
        .collect();
    let raw = fd.as_raw_fd();
    let ring = arm(raw, qid, &ents, opts.setup);
    armed.wait();
    let mut ring = ring?;
    let mut scratch = Vec::with_capacity(4096);
    let mut ready = Vec::with_capacity(opts.depth);
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        ready.clear();
        ready.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
        for &(i, res) in &ready {
            if res < 0 {
                return match -res {
                    // The connection is gone (unmounted or aborted).
                    libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED => Ok(()),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            let ent = &mut ents[i];
            // SAFETY: the completion handed this entry to userspace; the kernel
            // touches it again only once its COMMIT_AND_FETCH is submitted below.
            let header = unsafe { ent.header.slice() };
            let Some(h) = InHeader::parse(header) else {
                return Err(io::Error::other("short fuse_in_header on the ring"));
            };
            let commit_id = u64_at(header, ENT_COMMIT_ID);
            let mut op = [0u8; OP_IN];
            op.copy_from_slice(&header[OP_IN..2 * OP_IN]);
            // SAFETY: as for `header` (a different buffer).
            let payload = unsafe { ent.payload.slice() };
            let in_len = (u32_at(header, ENT_PAYLOAD_SZ) as usize).min(payload.len());
            // The reply overwrites the payload buffer: the request's payload (a name)
            // is kept apart.
            scratch.clear();
            scratch.extend_from_slice(&payload[..in_len]);
            floor.by_ring.fetch_add(1, Ordering::Relaxed);
            let (len, error) = match floor.handle(&h, &op, &scratch, payload) {
                Done::Reply(n) => (n, 0),
                Done::Error(e) => (0, -e),
                Done::None => (0, -libc::ENOSYS),
            };
            header[..4].copy_from_slice(&((OUT_HEADER + len) as u32).to_ne_bytes());
            header[4..8].copy_from_slice(&error.to_ne_bytes());
            header[8..16].copy_from_slice(&h.unique.to_ne_bytes());
            header[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&(len as u32).to_ne_bytes());
            let sqe = uring_cmd(
                raw,
                FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
                commit_id,
                qid,
                i as u64,
            );
            // SAFETY: the entry's buffers live in `ents` (outlives the ring); no slice
            // of them is used after this point until its next completion.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
    }
}

/// The number of possible CPUs: the kernel makes one ring queue per possible CPU and
/// routes nothing over io_uring until every queue has an entry.
fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for range in s.trim().split(',') {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let (a, b): (usize, usize) = (
            a.parse().map_err(io::Error::other)?,
            b.parse().map_err(io::Error::other)?,
        );
        n = n.max(b.max(a) + 1);
    }
    Ok(n)
}

/// Reads INIT and answers it; over io_uring only when the kernel offers it.
fn init(fd: &mut File, uring: bool) -> io::Result<()> {
    let mut buf = vec![0u8; DEV_BUF];
    let n = fd.read(&mut buf)?;
    let h = InHeader::parse(&buf[..n]).ok_or_else(|| io::Error::other("short INIT"))?;
    if h.opcode != INIT {
        return Err(io::Error::other(format!(
            "first request is opcode {}, not INIT",
            h.opcode
        )));
    }
    let arg = &buf[IN_HEADER..n];
    let (major, minor) = (u32_at(arg, 0), u32_at(arg, 4));
    if major != 7 {
        return Err(io::Error::other(format!(
            "FUSE protocol {major}.{minor}, not 7.x"
        )));
    }
    let mut offered = u64::from(u32_at(arg, 12));
    if offered & FUSE_INIT_EXT != 0 {
        offered |= u64::from(u32_at(arg, 16)) << 32;
    }
    let mut want = FUSE_ASYNC_READ
        | FUSE_BIG_WRITES
        | FUSE_DO_READDIRPLUS
        | FUSE_PARALLEL_DIROPS
        | FUSE_MAX_PAGES
        | FUSE_CACHE_SYMLINKS
        | FUSE_INIT_EXT;
    if uring {
        if offered & FUSE_OVER_IO_URING == 0 {
            return Err(io::Error::other(
                "the kernel does not offer FUSE_OVER_IO_URING at INIT \
                 (echo Y > /sys/module/fuse/parameters/enable_uring; kernel 6.14+)",
            ));
        }
        want |= FUSE_OVER_IO_URING;
    }
    let flags = want & offered;
    let mut out = vec![0u8; OUT_HEADER + 64];
    let mut p = Put {
        buf: &mut out[OUT_HEADER..],
        len: 0,
    };
    // struct fuse_init_out
    let _ = p.u32(7)
        && p.u32(minor.min(42))
        && p.u32(MAX_WRITE as u32) // max_readahead
        && p.u32(flags as u32)
        && p.bytes(&0u16.to_ne_bytes()) // max_background: kernel default
        && p.bytes(&0u16.to_ne_bytes()) // congestion_threshold
        && p.u32(MAX_WRITE as u32)
        && p.u32(1) // time_gran
        && p.bytes(&MAX_PAGES.to_ne_bytes())
        && p.bytes(&0u16.to_ne_bytes()) // map_alignment
        && p.u32((flags >> 32) as u32);
    dev_reply(fd, &mut out, h.unique, Done::Reply(64))
}

/// How each io_uring queue is run.
#[derive(Debug, Clone, Copy)]
struct QueueOpts {
    /// Ring entries (requests in flight) per queue.
    depth: usize,
    /// Pin the queue's thread to the queue's CPU.
    pin: bool,
    /// The io_uring setup flags.
    setup: RingSetup,
}

/// How each queue's io_uring is set up (`--ring`).
#[derive(Debug, Clone, Copy)]
enum RingSetup {
    /// No flags, as libfuse (whose comment finds SINGLE_ISSUER and COOP_TASKRUN
    /// slower).
    Plain,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN.
    Coop,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN.
    Defer,
}

struct Args {
    source: PathBuf,
    mountpoint: PathBuf,
    uring: bool,
    threads: Option<usize>,
    queue: QueueOpts,
    attr_ttl: u64,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: uring_floor [--transport dev|uring] [--threads N] [--depth D] \
                 [--no-pin] [--ring plain|coop|defer] [--attr-ttl SECS] SOURCE MOUNTPOINT";
    let mut a = Args {
        source: PathBuf::new(),
        mountpoint: PathBuf::new(),
        uring: false,
        threads: None,
        queue: QueueOpts {
            depth: 4,
            pin: true,
            setup: RingSetup::Plain,
        },
        attr_ttl: TTL_SECS,
    };
    let mut paths = Vec::new();
    let mut args = std::env::args_os().skip(1);
    let number = |args: &mut dyn Iterator<Item = OsString>| -> Result<u64, String> {
        args.next()
            .and_then(|n| n.to_str()?.parse().ok())
            .ok_or_else(|| usage.to_string())
    };
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--transport") => match args.next().as_deref().and_then(OsStr::to_str) {
                Some("dev") => a.uring = false,
                Some("uring") => a.uring = true,
                _ => return Err(usage.into()),
            },
            Some("--threads") => a.threads = Some(number(&mut args)?.max(1) as usize),
            Some("--depth") => a.queue.depth = number(&mut args)?.clamp(1, 256) as usize,
            Some("--no-pin") => a.queue.pin = false,
            Some("--ring") => {
                a.queue.setup = match args.next().as_deref().and_then(OsStr::to_str) {
                    Some("plain") => RingSetup::Plain,
                    Some("coop") => RingSetup::Coop,
                    Some("defer") => RingSetup::Defer,
                    _ => return Err(usage.into()),
                }
            }
            Some("--attr-ttl") => a.attr_ttl = number(&mut args)?,
            Some("-h" | "--help") => return Err(usage.into()),
            _ => paths.push(PathBuf::from(arg)),
        }
    }
    [a.source, a.mountpoint] = <[PathBuf; 2]>::try_from(paths).map_err(|_| usage)?;
    Ok(a)
}

fn run(args: Args) -> io::Result<()> {
    let nodes = floor_tree::preload(&args.source, |_, m| m.clone())?;
    let entries = nodes.len();
    let floor = Arc::new(Floor {
        nodes,
        attr_ttl: args.attr_ttl,
        files: Mutex::default(),
        next_fh: AtomicU64::new(1),
        counts: (0..64).map(|_| AtomicU64::new(0)).collect(),
        by_ring: AtomicU64::new(0),
    });
    let mut fd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let opts = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions",
        fd.as_raw_fd()
    );
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("uring-floor"),
        &args.mountpoint,
        Some("fuse.uring-floor"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(opts.as_str()),
    )
    .map_err(|e| at(&args.mountpoint)(e.into()))?;
    init(&mut fd, args.uring)?;
    let fd = Arc::new(fd);
    let mut workers = Vec::new();
    let transport = if args.uring {
        let queues = possible_cpus()?;
        let armed = Arc::new(Barrier::new(queues + 1));
        for qid in 0..queues {
            let (floor, fd, armed) = (floor.clone(), fd.clone(), armed.clone());
            workers.push(std::thread::spawn(move || {
                let r = serve_queue(&floor, &fd, qid as u16, args.queue, &armed);
                if let Err(e) = &r {
                    // A refused REGISTER makes the kernel fall back to /dev/fuse for
                    // the connection: exit (ending the mount) rather than measure that.
                    eprintln!("uring_floor: queue {qid}: {e}");
                    std::process::exit(1);
                }
                r
            }));
        }
        // FORGET and INTERRUPT keep coming by /dev/fuse.
        let (f, dev) = (floor.clone(), clone_dev(&fd)?);
        workers.push(std::thread::spawn(move || serve_dev(&f, dev)));
        armed.wait();
        let q = args.queue;
        format!(
            "io_uring, {queues} queues x {} entries{}, {:?} rings",
            q.depth,
            if q.pin { ", pinned" } else { "" },
            q.setup,
        )
    } else {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = args.threads.unwrap_or(cpus);
        for _ in 0..threads {
            let (f, dev) = (floor.clone(), clone_dev(&fd)?);
            workers.push(std::thread::spawn(move || serve_dev(&f, dev)));
        }
        format!("/dev/fuse, {threads} threads")
    };
    eprintln!("uring_floor: {entries} entries preloaded; serving by {transport}");
    let mut result = Ok(());
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(io::Error::other("a serving thread panicked")),
        }
    }
    floor.report();
    result
}

fn main() -> ExitCode {
    floor_tree::main("uring_floor", parse_args, run)
}
