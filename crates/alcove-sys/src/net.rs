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

/// Every address of every interface of the caller's network namespace (the
/// host's own addresses, which a sandbox's outbound link must not reach).
pub fn interface_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list it allocated to `list` on success.
    crate::cvt_int(unsafe { libc::getifaddrs(&mut list) })?;
    let mut out = Vec::new();
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*at };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which
            // larger struct it is; each is read only for its own family.
            unsafe {
                match i32::from((*entry.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                        out.push(
                            std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
                        );
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                        out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
                    }
                    _ => {}
                }
            }
        }
        at = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once; nothing above outlives it.
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn interface_addresses_include_loopback() {
        let all = super::interface_addresses().unwrap();
        assert!(
            all.contains(&std::net::Ipv4Addr::LOCALHOST.into()),
            "{all:?}"
        );
    }
}
