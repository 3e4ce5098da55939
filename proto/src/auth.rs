//! Authentication of the internal gRPC services (the node registry and the nodes'
//! `Node` service): every call carries the region's internal token
//! (`authorization: Bearer …`, derived from the region's `secrets.key`, which every
//! gateway, node and registry of the region has), and every server checks it in
//! constant time before the call reaches its handler. A process without the region's
//! key cannot register a node, read the registry, or run anything on a node.
//!
//! Without a key (a single machine, everything on loopback) no token is sent or
//! asked for.

use sha2::Digest as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// The region's internal token for `secrets_key` (hex).
pub fn token_from_key(secrets_key: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"nimbus internal grpc v1\0");
    h.update(secrets_key.trim().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds the token to every outgoing call.
#[derive(Clone, Default)]
pub struct AddToken(Option<MetadataValue<Ascii>>);

impl AddToken {
    /// Sends `token`, if any.
    pub fn new(token: Option<&str>) -> AddToken {
        AddToken(token.and_then(|t| format!("Bearer {t}").parse().ok()))
    }
}

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Refuses every incoming call without the token.
#[derive(Clone, Default)]
pub struct RequireToken(Option<std::sync::Arc<[u8]>>);

impl RequireToken {
    /// Asks for `token`, if any.
    pub fn new(token: Option<&str>) -> RequireToken {
        RequireToken(token.map(|t| format!("Bearer {t}").into_bytes().into()))
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else { return Ok(req) };
        let got = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // Constant time over the expected length.
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(want.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "the region's internal token is required",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    #[test]
    fn only_the_token_passes() {
        let token = token_from_key("00ff");
        assert_ne!(token, token_from_key("00fe"));
        let mut check = RequireToken::new(Some(&token));
        let signed = AddToken::new(Some(&token)).call(Request::new(())).unwrap();
        assert!(check.call(signed).is_ok());
        assert!(check.call(Request::new(())).is_err());
        let wrong = AddToken::new(Some("nope")).call(Request::new(())).unwrap();
        assert_eq!(
            check.call(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // No key: open (single machine).
        assert!(RequireToken::new(None).call(Request::new(())).is_ok());
    }
}
