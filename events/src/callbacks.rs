//! Callbacks: an asynchronous invocation's outcome POSTed to the tenant's
//! `callback_url`, from the platform's network — so to public addresses only
//! (unless the operator allows private networks), with no redirects.

use std::time::Duration;

pub use nimbus_core::net::is_public;

/// A name with no public address, from [`PublicOnly`].
#[derive(Debug, thiserror::Error)]
#[error("{0} has no public address")]
struct NotPublic(String);

/// Resolves names to their public addresses only: a name that points inside (or is
/// rebound to point inside after a check) cannot be reached.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let public: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(Box::new(NotPublic(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client callbacks are sent with: no redirects (a redirect could point inside),
/// and, unless private networks are allowed, public addresses only.
pub fn callback_client(private: bool) -> reqwest::Result<reqwest::Client> {
    let b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    if private {
        b.build()
    } else {
        b.dns_resolver(PublicOnly).build()
    }
}

/// Why a callback was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The URL points at a non-public address: never retried.
    #[error("{0}")]
    Forbidden(String),
    /// The request failed or was refused: worth a retry.
    #[error("{0}")]
    Failed(String),
}

/// POSTs `body` to `url` once with `http` (from [`callback_client`]).
pub async fn post_callback(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    private: bool,
) -> Result<(), CallbackError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| CallbackError::Forbidden(e.to_string()))?;
    let literal = parsed
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok());
    if !private && let Some(ip) = literal.filter(|ip| !is_public(*ip)) {
        return Err(CallbackError::Forbidden(format!(
            "{ip} is not a public address"
        )));
    }
    match http.post(url).json(body).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(CallbackError::Failed(format!("answered {}", r.status()))),
        Err(e) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if let Some(n) = c.downcast_ref::<NotPublic>() {
                    return Err(CallbackError::Forbidden(n.to_string()));
                }
                cause = c.source();
            }
            Err(CallbackError::Failed(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CallbackError, callback_client, post_callback};

    #[tokio::test]
    async fn callbacks_do_not_reach_private_networks_unless_allowed() {
        let server = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, server).await });
        let body = serde_json::json!({"ok": true});
        let strict = callback_client(false).unwrap();
        for url in [
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://localhost:{port}/hook"),
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        ] {
            let r = post_callback(&strict, &url, &body, false).await;
            assert!(
                matches!(r, Err(CallbackError::Forbidden(_))),
                "{url}: {r:?}"
            );
        }
        let open = callback_client(true).unwrap();
        let url = format!("http://localhost:{port}/hook");
        assert!(post_callback(&open, &url, &body, true).await.is_ok());
    }
}
