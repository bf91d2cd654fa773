#![allow(unsafe_code)]
//! `lab-delay`: a user-space delay line between two interfaces, for the NAT lab.
//!
//! The kernel here has no `netem`, so the lab emulates a long link in user space: this
//! program opens an `AF_PACKET` socket on each of two interfaces (`--a`, `--b`) and
//! forwards every frame that arrives on one out of the other, `--delay-ms` after it
//! arrived. Each direction has its own thread and its own preallocated ring of frame
//! slots, so frames keep their order and nothing is allocated per frame.
//!
//! IPv4 frames also lose `--ttl-dec` (default 10) from their TTL, as they would across
//! ten more routers: a probe sent with a small TTL (to open one's own NAT without
//! reaching the far one) then dies on the way, as it would on the real internet.
//! Frames whose TTL would reach 0 are dropped.
//!
//! The interfaces must have TX checksum offload, TSO, GSO and GRO turned off (the lab
//! does that with `ethtool -K`), or frames arrive with partial checksums or as 64 KiB
//! super-frames. Oversized frames are dropped with a warning on stderr.
//!
//! Prints `ready` on stdout once both sockets are bound. Exits when its parent process
//! goes away (so a killed test leaves no delay process behind), or on a socket error.
//!
//! The forwarding threads run at realtime priority (`SCHED_FIFO`, `--rt-priority`, 0 to
//! turn off) so that a busy machine does not add milliseconds of jitter to the delay.
//!
//! Usage: `lab-delay --a IFACE --b IFACE --delay-ms MS [--ttl-dec N] [--queue FRAMES]
//! [--rt-priority P]`

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per frame slot. Frames are at most MTU (1500) + Ethernet header (14) + a VLAN
/// tag (4) with offloads off; anything bigger means offloads are on and is dropped.
const SLOT_LEN: usize = 2048;

/// Frames held per direction by default: 4096 × 1514 bytes ≈ 6 MB in flight, enough for
/// 3 Gbit/s at 15 ms. A full ring drops new frames, like a router's full queue.
const DEFAULT_QUEUE: usize = 4096;

/// Socket buffer size asked for (with the `FORCE` variants, as root): bursts of a fast
/// TCP sender must not overflow the kernel's queue before the thread reads them.
const SOCKET_BUFFER: libc::c_int = 32 * 1024 * 1024;

/// Most frames read in one go before the thread checks for frames that are due.
const RECV_BURST: usize = 64;

/// How often the parent process is checked for.
const PARENT_CHECK: Duration = Duration::from_millis(200);

/// SCHED_FIFO priority of the forwarding threads (0: normal scheduling). With normal
/// scheduling, two cores busy with a parallel test delayed frames by up to 38 ms more
/// (ping RTT 20 ms: max 57.9 ms, mdev 5.2 ms); at FIFO priority the same load left
/// max 22.0 ms, mdev 0.2 ms. The threads sleep unless frames flow, and the kernel's
/// realtime throttling keeps 5% of each core for everything else.
const DEFAULT_RT_PRIORITY: i32 = 10;

/// `PACKET_IGNORE_OUTGOING` from `linux/if_packet.h` (kernel ≥ 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// `ETH_P_IP` in host order.
const ETH_P_IP: u16 = 0x0800;

struct Args {
    a: String,
    b: String,
    delay: Duration,
    ttl_dec: u8,
    queue: usize,
    rt_priority: i32,
}

fn usage() -> ! {
    eprintln!("usage: lab-delay --a IFACE --b IFACE --delay-ms MS [--ttl-dec N] [--queue FRAMES]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = None;
    let mut b = None;
    let mut delay_ms: Option<u64> = None;
    let mut ttl_dec = 10u8;
    let mut queue = DEFAULT_QUEUE;
    let mut rt_priority = DEFAULT_RT_PRIORITY;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else { usage() };
        match flag.as_str() {
            "--a" => a = Some(value),
            "--b" => b = Some(value),
            "--delay-ms" => delay_ms = Some(value.parse().unwrap_or_else(|_| usage())),
            "--ttl-dec" => ttl_dec = value.parse().unwrap_or_else(|_| usage()),
            "--queue" => queue = value.parse().unwrap_or_else(|_| usage()),
            "--rt-priority" => rt_priority = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    match (a, b, delay_ms) {
        (Some(a), Some(b), Some(ms)) if queue > 0 => Args {
            a,
            b,
            delay: Duration::from_millis(ms),
            ttl_dec,
            queue,
            rt_priority,
        },
        _ => usage(),
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a valid c_int living for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Opens an `AF_PACKET` raw socket receiving every frame of `ifname` (and sending there).
fn open_packet_socket(ifname: &str) -> io::Result<OwnedFd> {
    let name = CString::new(ifname).map_err(|_| io::Error::other("interface name has a NUL"))?;
    // SAFETY: plain FFI call with a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::other(format!(
            "no interface {ifname}: {}",
            io::Error::last_os_error()
        )));
    }
    // Protocol 0: the socket receives nothing until bound, so no frame of another
    // interface can slip in between socket() and bind().
    // SAFETY: plain FFI call.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let s = fd.as_raw_fd();
    if set_int_opt(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCKET_BUFFER).is_err() {
        set_int_opt(s, libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_BUFFER)?;
    }
    if set_int_opt(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCKET_BUFFER).is_err() {
        set_int_opt(s, libc::SOL_SOCKET, libc::SO_SNDBUF, SOCKET_BUFFER)?;
    }
    // Best effort: older kernels lack it, and the receive path checks sll_pkttype anyway.
    let _ = set_int_opt(s, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);

    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as libc::c_ushort;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: `addr` is a valid sockaddr_ll and the length matches it.
    cvt(unsafe {
        libc::bind(
            s,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// A fixed ring of frame slots with their due times: the delay line of one direction.
struct Ring {
    data: Vec<u8>,
    len: Vec<u16>,
    due: Vec<Instant>,
    head: usize,
    count: usize,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        let now = Instant::now();
        Ring {
            data: vec![0; cap * SLOT_LEN],
            len: vec![0; cap],
            due: vec![now; cap],
            head: 0,
            count: 0,
        }
    }

    fn cap(&self) -> usize {
        self.len.len()
    }

    fn is_full(&self) -> bool {
        self.count == self.cap()
    }

    fn tail_index(&self) -> usize {
        (self.head + self.count) % self.cap()
    }

    /// The free slot after the last queued frame. Call only when not full.
    fn tail_slot(&mut self) -> &mut [u8] {
        let i = self.tail_index();
        &mut self.data[i * SLOT_LEN..(i + 1) * SLOT_LEN]
    }

    /// Queues the frame written into `tail_slot()`.
    fn push(&mut self, len: usize, due: Instant) {
        let i = self.tail_index();
        self.len[i] = len as u16;
        self.due[i] = due;
        self.count += 1;
    }

    fn front_due(&self) -> Option<Instant> {
        (self.count > 0).then(|| self.due[self.head])
    }

    fn front(&self) -> &[u8] {
        let i = self.head;
        &self.data[i * SLOT_LEN..i * SLOT_LEN + self.len[i] as usize]
    }

    fn pop(&mut self) {
        self.head = (self.head + 1) % self.cap();
        self.count -= 1;
    }
}

/// One's-complement update of a 16-bit checksum when one 16-bit word changes
/// (RFC 1624, equation 3).
fn checksum_update(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Lowers the TTL of an IPv4 frame by `dec`, fixing the header checksum. Returns false
/// if the frame must be dropped (TTL would reach 0). Other frames pass untouched.
fn age_frame(frame: &mut [u8], dec: u8) -> bool {
    if dec == 0 || frame.len() < 14 + 20 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP {
        return true;
    }
    let ip = &mut frame[14..];
    if ip[0] >> 4 != 4 {
        return true;
    }
    let ttl = ip[8];
    if ttl <= dec {
        return false;
    }
    let old = u16::from_be_bytes([ip[8], ip[9]]);
    ip[8] = ttl - dec;
    let new = u16::from_be_bytes([ip[8], ip[9]]);
    let check = u16::from_be_bytes([ip[10], ip[11]]);
    ip[10..12].copy_from_slice(&checksum_update(check, old, new).to_be_bytes());
    true
}

/// Receives one frame without blocking. `Ok(None)`: nothing to read.
/// `Ok(Some(None))`: a frame to skip (our own outgoing one, or too big).
fn recv_frame(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Option<usize>>> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and addr are valid for writes of the given lengths.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            (&mut addr as *mut libc::sockaddr_ll).cast(),
            &mut addr_len,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            // ENETDOWN: reported once when the link goes down; frames flow again when
            // it comes back up.
            Some(libc::EAGAIN | libc::EINTR | libc::ENETDOWN) => Ok(None),
            _ => Err(err),
        };
    }
    let n = n as usize;
    if addr.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(Some(None));
    }
    if n > buf.len() {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            eprintln!(
                "lab-delay: dropping a {n}-byte frame (offloads still on? run ethtool -K IFACE tx off tso off gso off gro off)"
            );
        }
        return Ok(Some(None));
    }
    Ok(Some(Some(n)))
}

/// Sends one frame. A full device queue or a downed link drops the frame, as a router
/// would.
fn send_frame(fd: RawFd, frame: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: frame is valid for reads of its length.
        let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Full queue, or the link is down (a test cut it): the frame is lost.
            Some(libc::ENOBUFS | libc::EAGAIN | libc::ENETDOWN | libc::ENXIO) => return Ok(()),
            _ => return Err(err),
        }
    }
}

/// Waits until `fd` is readable or `timeout` has passed.
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: pfd and ts are valid for the duration of the call.
    let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    Ok(())
}

/// Forwards frames from `rx` to `tx`, each `delay` after it arrived. Runs until error.
fn pump(rx: RawFd, tx: RawFd, delay: Duration, ttl_dec: u8, queue: usize) -> io::Error {
    let mut ring = Ring::new(queue);
    loop {
        let timeout = match ring.front_due() {
            Some(due) => due.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(1),
        };
        if ring.is_full() {
            std::thread::sleep(timeout);
        } else if !timeout.is_zero() {
            if let Err(e) = wait_readable(rx, timeout) {
                return e;
            }
        }

        for _ in 0..RECV_BURST {
            if ring.is_full() {
                break;
            }
            match recv_frame(rx, ring.tail_slot()) {
                Ok(None) => break,
                Ok(Some(None)) => {}
                Ok(Some(Some(len))) => {
                    let arrived = Instant::now();
                    if age_frame(&mut ring.tail_slot()[..len], ttl_dec) {
                        ring.push(len, arrived + delay);
                    }
                }
                Err(e) => return e,
            }
        }

        let now = Instant::now();
        while ring.front_due().is_some_and(|due| due <= now) {
            if let Err(e) = send_frame(tx, ring.front()) {
                return e;
            }
            ring.pop();
        }
    }
}

fn main() {
    let args = parse_args();
    let parent = std::os::unix::process::parent_id();
    let (a, b) = match (open_packet_socket(&args.a), open_packet_socket(&args.b)) {
        (Ok(a), Ok(b)) => (Arc::new(a), Arc::new(b)),
        (Err(e), _) => {
            eprintln!("lab-delay: {}: {e}", args.a);
            std::process::exit(1)
        }
        (_, Err(e)) => {
            eprintln!("lab-delay: {}: {e}", args.b);
            std::process::exit(1)
        }
    };

    let spawn = |name: String, rx: Arc<OwnedFd>, tx: Arc<OwnedFd>| {
        let (delay, ttl_dec, queue, rt) = (args.delay, args.ttl_dec, args.queue, args.rt_priority);
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if rt > 0 {
                    let param = libc::sched_param { sched_priority: rt };
                    // SAFETY: plain FFI call on the calling thread with a valid param.
                    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
                        eprintln!(
                            "lab-delay: no realtime priority: {}",
                            io::Error::last_os_error()
                        );
                    }
                }
                let err = pump(rx.as_raw_fd(), tx.as_raw_fd(), delay, ttl_dec, queue);
                eprintln!("lab-delay: {name}: {err}");
                std::process::exit(1);
            })
    };
    let threads = [
        spawn(format!("{}->{}", args.a, args.b), a.clone(), b.clone()),
        spawn(format!("{}->{}", args.b, args.a), b, a),
    ];
    if let Some(Err(e)) = threads.iter().find(|t| t.is_err()) {
        eprintln!("lab-delay: cannot start a thread: {e}");
        std::process::exit(1);
    }

    let mut out = io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();

    loop {
        std::thread::sleep(PARENT_CHECK);
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 header checksum computed from scratch.
    fn full_checksum(header: &[u8]) -> u16 {
        let mut sum = 0u32;
        for (i, pair) in header.chunks(2).enumerate() {
            if i != 5 {
                sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            }
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn frame(ttl: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let mut ip = vec![
            0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, ttl, 6, 0, 0, 203, 0, 113, 21, 203, 0, 113, 10,
        ];
        let c = full_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend(ip);
        f
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        for ttl in [11u8, 12, 64, 128, 255] {
            let mut f = frame(ttl);
            assert!(age_frame(&mut f, 10));
            assert_eq!(f[14 + 8], ttl - 10);
            let stored = u16::from_be_bytes([f[14 + 10], f[14 + 11]]);
            assert_eq!(stored, full_checksum(&f[14..34]), "ttl {ttl}");
        }
    }

    #[test]
    fn low_ttl_is_dropped_and_other_frames_pass() {
        assert!(!age_frame(&mut frame(10), 10));
        assert!(!age_frame(&mut frame(1), 10));
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let before = arp.clone();
        assert!(age_frame(&mut arp, 10));
        assert_eq!(arp, before);
    }

    #[test]
    fn ring_keeps_order() {
        let mut ring = Ring::new(2);
        let t = Instant::now();
        ring.tail_slot()[0] = 1;
        ring.push(1, t);
        ring.tail_slot()[0] = 2;
        ring.push(1, t);
        assert!(ring.is_full());
        assert_eq!(ring.front(), &[1]);
        ring.pop();
        ring.tail_slot()[0] = 3;
        ring.push(1, t);
        assert_eq!(ring.front(), &[2]);
        ring.pop();
        assert_eq!(ring.front(), &[3]);
    }
}
