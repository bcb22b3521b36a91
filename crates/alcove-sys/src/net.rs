//! Network setup without helper binaries.

use std::io;

/// Brings the loopback interface of the caller's network namespace up, the one
/// thing `ip link set lo up` would do for a fresh namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes plain integers.
    let sock = crate::cvt_int(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: a zeroed ifreq is a valid value; we fill in the name below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads and writes `req`, a valid ifreq.
    let result = crate::cvt_int(unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) })
        .and_then(|_| {
            // SAFETY: after SIOCGIFFLAGS the flags member of the union is set.
            unsafe {
                req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short
            };
            // SAFETY: SIOCSIFFLAGS reads `req`, a valid ifreq.
            crate::cvt_int(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) })
        });
    // SAFETY: `sock` was opened above and is closed exactly once.
    unsafe { libc::close(sock) };
    result.map(drop)
}
