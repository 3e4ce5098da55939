//! Which network addresses belong to the platform's inside: what no tenant-controlled
//! connection (an egress rule, a callback URL) may reach unless the operator opens it.

use std::net::IpAddr;

/// Whether `ip` is on the public internet. Everything else is closed to tenants:
/// loopback, private (RFC 1918, unique local), link-local and the cloud metadata
/// endpoints in it (169.254.169.254, fd00:ec2::254), carrier-grade NAT (100.64/10,
/// where some clouds put metadata too), multicast, broadcast, unspecified, reserved
/// and documentation ranges, and IPv6 forms that embed an IPv4 address (mapped,
/// NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) when that address is closed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [b0, b1, b2, _] = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || b0 == 0
                || b0 >= 240
                || (b0 == 100 && (64..128).contains(&b1))
                || (b0 == 192 && b1 == 0 && b2 == 0)
                || (b0 == 198 && (18..20).contains(&b1)))
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = a.segments();
            let embedded = |hi: u16, lo: u16| {
                is_public(IpAddr::V4(std::net::Ipv4Addr::from(
                    ((hi as u32) << 16) | lo as u32,
                )))
            };
            if s[0] == 0x64 && s[1] == 0xff9b {
                // NAT64: the last 32 bits (well-known and local-use prefixes).
                return embedded(s[6], s[7]);
            }
            if s[0] == 0x2002 {
                // 6to4: bits 16..48.
                return embedded(s[1], s[2]);
            }
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0))
        }
    }
}

/// An address range (`10.0.0.0/8`, `fd00::/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network's address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub len: u8,
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u32::from(a) as u128, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

impl Cidr {
    /// Parses `addr/len` or a bare address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => {
                let ip: IpAddr = ip.parse().ok()?;
                (ip, len.parse().ok()?)
            }
            None => {
                let ip: IpAddr = s.parse().ok()?;
                (ip, bits(ip).1)
            }
        };
        (len <= bits(ip).1).then_some(Cidr { addr: ip, len })
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as IPv4) is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ((a, w), (b, w2)) = (bits(self.addr), bits(ip));
        if w != w2 {
            return false;
        }
        self.len == 0 || (a >> (w - self.len)) == (b >> (w - self.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "ff02::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ranges() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.9.9.9".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("1.2.3.4/33").is_none());
        assert!(Cidr::parse("example.com").is_none());
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
    }
}
