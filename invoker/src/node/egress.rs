//! The egress proxy: the only way out of a sandbox whose tenant allows egress.
//!
//! An HTTP proxy on a Unix socket bound into the instance's sandbox (`nimbus-init`
//! forwards `127.0.0.1:3128` inside to it; `HTTP_PROXY` and `HTTPS_PROXY` point
//! there). It takes `CONNECT host:port` (HTTPS, or any TCP) and absolute-form HTTP
//! requests (`GET http://host/…`), and lets a connection through only if the tenant's
//! rules allow the destination:
//! - a host-name rule allows that name and its subdomains;
//! - an IP or CIDR rule allows addresses in it; the name is resolved here, and the
//!   proxy connects to the address it checked (no second lookup to race).
//!
//! Anything else is answered `403` and closed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// Largest request head.
const MAX_HEAD: usize = 16 * 1024;

/// One egress rule.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    /// A name and its subdomains.
    Host(String),
    /// An address range.
    Net(IpAddr, u8),
}

/// A tenant's egress rules.
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<Rule>);

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u32::from(a) as u128, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

impl Rules {
    /// Parses rules as the network service stores them; unusable ones are skipped.
    pub fn parse(rules: &[String]) -> Rules {
        Rules(
            rules
                .iter()
                .filter_map(|r| {
                    let r = r.trim();
                    if let Some((ip, len)) = r.split_once('/') {
                        let ip: IpAddr = ip.parse().ok()?;
                        let len: u8 = len.parse().ok()?;
                        (len <= bits(ip).1).then_some(Rule::Net(ip, len))
                    } else if let Ok(ip) = r.parse::<IpAddr>() {
                        Some(Rule::Net(ip, bits(ip).1))
                    } else {
                        Some(Rule::Host(r.trim_end_matches('.').to_ascii_lowercase()))
                    }
                })
                .collect(),
        )
    }

    /// Whether any rule is set.
    pub fn any(&self) -> bool {
        !self.0.is_empty()
    }

    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.0.iter().any(|r| match r {
            Rule::Host(h) => host == *h || host.ends_with(&format!(".{h}")),
            Rule::Net(..) => false,
        })
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|r| match r {
            Rule::Net(net, len) => {
                let ((a, w), (b, w2)) = (bits(*net), bits(ip));
                if w != w2 {
                    return false;
                }
                let shift = w - len;
                *len == 0 || (a >> shift) == (b >> shift)
            }
            Rule::Host(_) => false,
        })
    }

    /// The address to connect to for `host:port`, if the rules allow it.
    async fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let by_name = self.allows_name(host);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await.ok()?.collect();
        addrs
            .into_iter()
            .find(|a| by_name || self.allows_ip(a.ip()))
    }
}

/// Serves the proxy on `listener` until the listener is dropped (the task aborted).
pub async fn serve(listener: UnixListener, rules: Arc<Rules>) {
    while let Ok((conn, _)) = listener.accept().await {
        let rules = rules.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(conn, &rules).await {
                tracing::debug!(error = %e, "egress proxy connection");
            }
        });
    }
}

async fn reply(conn: &mut UnixStream, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("nimbus egress proxy: {why}\n");
    conn.write_all(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

/// Splits `host:port` (IPv6 in brackets), with a default port.
fn host_port(s: &str, default: u16) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((s.to_string(), default)),
    }
}

async fn handle(mut conn: UnixStream, rules: &Rules) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return reply(
                &mut conn,
                "431 Request Header Fields Too Large",
                "request head too large",
            )
            .await;
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let first = head.lines().next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let (host, port, forward_head) = if method.eq_ignore_ascii_case("CONNECT") {
        let Some((h, p)) = host_port(target, 443) else {
            return reply(&mut conn, "400 Bad Request", "CONNECT needs host:port").await;
        };
        (h, p, None)
    } else if let Some(rest) = target.strip_prefix("http://") {
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let Some((h, p)) = host_port(authority, 80) else {
            return reply(&mut conn, "400 Bad Request", "bad request target").await;
        };
        // The origin-form request, then the rest of the head as sent.
        let rest_of_head = &head[first.len()..];
        (
            h,
            p,
            Some(format!("{method} {path} {version}{rest_of_head}")),
        )
    } else {
        return reply(
            &mut conn,
            "400 Bad Request",
            "use CONNECT host:port or an absolute http:// URL",
        )
        .await;
    };
    let Some(addr) = rules.resolve(&host, port).await else {
        return reply(
            &mut conn,
            "403 Forbidden",
            &format!("egress to {host}:{port} is not allowed by the tenant's network rules"),
        )
        .await;
    };
    let mut upstream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            return reply(&mut conn, "502 Bad Gateway", &format!("{host}:{port}: {e}")).await;
        }
    };
    let _ = upstream.set_nodelay(true);
    match forward_head {
        None => {
            conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
            // Bytes the client sent after the head belong to the tunnel.
            upstream.write_all(&buf[head_end..]).await?;
        }
        Some(h) => {
            upstream.write_all(h.as_bytes()).await?;
            upstream.write_all(&buf[head_end..]).await?;
        }
    }
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_names_and_ranges() {
        let r = Rules::parse(&[
            "example.com".into(),
            "10.0.0.0/8".into(),
            "192.168.1.7".into(),
            "::1".into(),
        ]);
        assert!(r.allows_name("example.com") && r.allows_name("api.Example.com."));
        assert!(!r.allows_name("badexample.com") && !r.allows_name("example.com.evil"));
        for ip in ["10.1.2.3", "192.168.1.7", "::1", "::ffff:10.0.0.1"] {
            assert!(r.allows_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.168.1.8", "127.0.0.1", "::2"] {
            assert!(!r.allows_ip(ip.parse().unwrap()), "{ip}");
        }
        assert!(Rules::parse(&["0.0.0.0/0".into()]).allows_ip("8.8.8.8".parse().unwrap()));
        assert!(!Rules::parse(&[]).any());
    }

    #[test]
    fn splits_host_and_port() {
        assert_eq!(host_port("a.b:8443", 443), Some(("a.b".into(), 8443)));
        assert_eq!(host_port("a.b", 80), Some(("a.b".into(), 80)));
        assert_eq!(host_port("[::1]:9", 80), Some(("::1".into(), 9)));
        assert_eq!(host_port("a:b", 80), None);
    }
}
