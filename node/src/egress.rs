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
//! Whatever the rules say, the platform stays closed: an address that is not on the
//! public internet ([`nimbus_core::net::is_public`]: loopback, private, link-local and
//! metadata, CGNAT, multicast, …) is refused, checked on the address actually
//! connected to, after resolution — unless the operator opened that range in
//! `node.egress_open_networks`.
//!
//! Anything else is answered `403`. Requests are parsed by hyper (HTTP/1); a request
//! head must arrive within 10 s and fit in 16 KiB; a connection to the destination
//! must open within 10 s; an instance has at most 64 connections through the proxy at
//! once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use nimbus_core::net::{Cidr, is_public};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// Largest request head.
const MAX_HEAD: usize = 16 * 1024;
/// How long a request head may take to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections of one instance through the proxy at once.
const MAX_CONNECTIONS: usize = 64;

/// One egress rule.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    /// A name and its subdomains.
    Host(String),
    /// An address range.
    Net(Cidr),
}

/// A tenant's egress rules, and the ranges the operator opened.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The tenant's.
    rules: Vec<Rule>,
    /// Non-public ranges the operator lets tenants' rules reach.
    open: Vec<Cidr>,
}

/// Why a destination is refused.
#[derive(Debug, PartialEq)]
enum Refused {
    /// The tenant's rules do not allow it.
    NotAllowed,
    /// It resolves only to the platform's inside.
    Closed,
    /// It does not resolve.
    Unknown,
}

impl Rules {
    /// Parses rules as the network service stores them (unusable ones are skipped),
    /// with the operator's `open` ranges.
    pub fn parse(rules: &[String], open: &[String]) -> Rules {
        Rules {
            rules: rules
                .iter()
                .filter_map(|r| {
                    let r = r.trim();
                    if r.is_empty() {
                        None
                    } else if r.contains('/') || r.parse::<IpAddr>().is_ok() {
                        Cidr::parse(r).map(Rule::Net)
                    } else {
                        Some(Rule::Host(r.trim_end_matches('.').to_ascii_lowercase()))
                    }
                })
                .collect(),
            open: open.iter().filter_map(|o| Cidr::parse(o)).collect(),
        }
    }

    /// Whether any rule is set.
    pub fn any(&self) -> bool {
        !self.rules.is_empty()
    }

    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().any(|r| match r {
            Rule::Host(h) => host == *h || host.ends_with(&format!(".{h}")),
            Rule::Net(..) => false,
        })
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.rules.iter().any(|r| match r {
            Rule::Net(net) => net.contains(ip),
            Rule::Host(_) => false,
        })
    }

    /// Whether a tenant may reach `ip` at all.
    fn reachable(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.open.iter().any(|c| c.contains(ip))
    }

    /// Whether the rules let a connection to `ip` through, for a request naming
    /// `by_name` an allowed host.
    fn check(&self, ip: IpAddr, by_name: bool) -> Result<(), Refused> {
        if !(by_name || self.allows_ip(ip)) {
            Err(Refused::NotAllowed)
        } else if !self.reachable(ip) {
            Err(Refused::Closed)
        } else {
            Ok(())
        }
    }

    /// The address to connect to for `host:port`, if the rules allow it: the one
    /// checked is the one connected to (no second lookup to race).
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, Refused> {
        let by_name = self.allows_name(host);
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| Refused::Unknown)?
                .map_err(|_| Refused::Unknown)?
                .collect();
        let mut why = Refused::Unknown;
        for a in addrs {
            match self.check(a.ip(), by_name) {
                Ok(()) => return Ok(a),
                Err(Refused::Closed) => why = Refused::Closed,
                Err(e) if why == Refused::Unknown => why = e,
                Err(_) => {}
            }
        }
        Err(why)
    }
}

/// Serves the proxy on `listener` until the listener is dropped (the task aborted).
/// Its connections end with it.
pub async fn serve(listener: UnixListener, rules: Arc<Rules>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { break };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Over the cap: closed unanswered.
                    continue;
                };
                let rules = rules.clone();
                conns.spawn(async move {
                    if let Err(e) = handle(conn, rules).await {
                        tracing::debug!(error = %e, "egress proxy connection");
                    }
                    drop(slot);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

type Reply = Response<axum::body::Body>;

fn reply(status: StatusCode, why: &str) -> Reply {
    let mut r = Response::new(axum::body::Body::from(format!(
        "nimbus egress proxy: {why}\n"
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// The destination of a request: `host:port` of a CONNECT, or the authority of an
/// absolute `http://` URL (port 80 by default). IPv6 hosts lose their brackets.
fn destination<B>(req: &Request<B>) -> Option<(String, u16)> {
    let connect = req.method() == Method::CONNECT;
    if !connect && req.uri().scheme_str() != Some("http") {
        return None;
    }
    let auth = req.uri().authority()?;
    let port = auth.port_u16().or(if connect { None } else { Some(80) })?;
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// One connection from the instance, parsed by hyper (HTTP/1): `CONNECT` becomes a
/// tunnel, an absolute-form request is forwarded, anything else is refused.
async fn handle(conn: UnixStream, rules: Arc<Rules>) -> Result<(), hyper::Error> {
    let service = hyper::service::service_fn(move |req| {
        let rules = rules.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy(req, &rules).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
        .with_upgrades()
        .await
}

async fn proxy(mut req: Request<Incoming>, rules: &Rules) -> Reply {
    let Some((host, port)) = destination(&req) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "use CONNECT host:port or an absolute http:// URL",
        );
    };
    let addr = match rules.resolve(&host, port).await {
        Ok(a) => a,
        Err(why) => {
            let why = match why {
                Refused::NotAllowed => "is not allowed by the tenant's network rules",
                Refused::Closed => "is inside the platform's network, closed to functions",
                Refused::Unknown => "does not resolve",
            };
            return reply(
                StatusCode::FORBIDDEN,
                &format!("egress to {host}:{port} {why}"),
            );
        }
    };
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return reply(StatusCode::BAD_GATEWAY, &format!("{host}:{port}: {e}")),
        Err(_) => return reply(StatusCode::GATEWAY_TIMEOUT, &format!("{host}:{port}")),
    };
    let _ = upstream.set_nodelay(true);
    if req.method() == Method::CONNECT {
        // The tunnel: once hyper hands the connection over, bytes both ways.
        tokio::spawn(async move {
            if let Ok(client) = hyper::upgrade::on(req).await {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
        return Response::new(axum::body::Body::empty());
    }
    // Forwarded in origin form over a connection of its own, to the checked address.
    let origin = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_else(|_| hyper::Uri::from_static("/"));
    *req.uri_mut() = origin;
    if !req.headers().contains_key(hyper::header::HOST)
        && let Ok(v) = hyper::header::HeaderValue::from_str(&format!("{host}:{port}"))
    {
        req.headers_mut().insert(hyper::header::HOST, v);
    }
    req.headers_mut().remove("proxy-connection");
    req.headers_mut().remove(hyper::header::PROXY_AUTHORIZATION);
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(upstream)).await {
            Ok(x) => x,
            Err(e) => return reply(StatusCode::BAD_GATEWAY, &format!("{host}:{port}: {e}")),
        };
    tokio::spawn(conn);
    match sender.send_request(req).await {
        Ok(resp) => resp.map(axum::body::Body::new),
        Err(e) => reply(StatusCode::BAD_GATEWAY, &format!("{host}:{port}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_names_and_ranges() {
        let r = Rules::parse(
            &[
                "example.com".into(),
                "10.0.0.0/8".into(),
                "192.168.1.7".into(),
                "::1".into(),
            ],
            &[],
        );
        assert!(r.allows_name("example.com") && r.allows_name("api.Example.com."));
        assert!(!r.allows_name("badexample.com") && !r.allows_name("example.com.evil"));
        for ip in ["10.1.2.3", "192.168.1.7", "::1", "::ffff:10.0.0.1"] {
            assert!(r.allows_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.168.1.8", "127.0.0.1", "::2"] {
            assert!(!r.allows_ip(ip.parse().unwrap()), "{ip}");
        }
        assert!(Rules::parse(&["0.0.0.0/0".into()], &[]).allows_ip("8.8.8.8".parse().unwrap()));
        assert!(!Rules::parse(&[], &[]).any());
    }

    #[test]
    fn the_platform_stays_closed_whatever_the_rules() {
        let all = Rules::parse(
            &["0.0.0.0/0".into(), "::/0".into(), "localhost".into()],
            &[],
        );
        for ip in [
            "127.0.0.1",
            "10.0.0.5",
            "169.254.169.254",
            "100.100.100.200",
            "::1",
        ] {
            assert_eq!(
                all.check(ip.parse().unwrap(), false),
                Err(Refused::Closed),
                "{ip}"
            );
            // A host-name rule resolving inside is refused too.
            assert_eq!(all.check(ip.parse().unwrap(), true), Err(Refused::Closed));
        }
        assert_eq!(all.check("8.8.8.8".parse().unwrap(), false), Ok(()));
        // The operator opens a range; the tenant's rules still decide within it.
        let opened = Rules::parse(&["10.1.0.0/16".into()], &["10.1.2.0/24".into()]);
        assert_eq!(opened.check("10.1.2.3".parse().unwrap(), false), Ok(()));
        assert_eq!(
            opened.check("10.1.3.3".parse().unwrap(), false),
            Err(Refused::Closed)
        );
        assert_eq!(
            opened.check("8.8.8.8".parse().unwrap(), false),
            Err(Refused::NotAllowed)
        );
    }

    #[tokio::test]
    async fn names_are_checked_on_the_address_they_resolve_to() {
        let r = Rules::parse(&["localhost".into()], &[]);
        assert_eq!(r.resolve("localhost", 80).await, Err(Refused::Closed));
        let opened = Rules::parse(&["localhost".into()], &["127.0.0.0/8".into(), "::1".into()]);
        assert!(opened.resolve("localhost", 80).await.is_ok());
    }

    #[test]
    fn destinations_of_connect_and_absolute_requests() {
        let req = |m: Method, uri: &str| {
            let mut r = Request::new(());
            *r.method_mut() = m;
            *r.uri_mut() = uri.parse().unwrap();
            r
        };
        assert_eq!(
            destination(&req(Method::CONNECT, "a.b:8443")),
            Some(("a.b".into(), 8443))
        );
        assert_eq!(
            destination(&req(Method::GET, "http://a.b/x?y")),
            Some(("a.b".into(), 80))
        );
        assert_eq!(
            destination(&req(Method::GET, "http://[::1]:9/")),
            Some(("::1".into(), 9))
        );
        assert_eq!(destination(&req(Method::GET, "/relative")), None);
        assert_eq!(destination(&req(Method::GET, "https://a.b/")), None);
    }
}
