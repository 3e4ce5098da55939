//! AWS Signature Version 4 on the Lambda-compatible API: the request is signed again
//! with the secret of the access key it names, by the `aws-sigv4` crate (the SDKs'
//! own signer), and the two signatures must match.
//!
//! Only what the client signed is signed again: the headers its `SignedHeaders`
//! lists, the path and query as sent, and the body's SHA-256. The signature's scope
//! must be this gateway's region and the `lambda` service, and its time within
//! [`MAX_SKEW`] of the gateway's clock.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::error::LambdaError;
use crate::AppState;
use crate::caller::Caller;

/// How far a request's `X-Amz-Date` may be from the gateway's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// The only algorithm accepted.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, PartialEq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    /// `YYYYMMDD`.
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn invalid(message: impl Into<String>) -> LambdaError {
    LambdaError::invalid_signature(message)
}

fn parse(header: &str) -> Result<Authorization<'_>, LambdaError> {
    let rest = header
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| invalid(format!("only {ALGORITHM} signatures are accepted")))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(invalid(
            "the Authorization header needs Credential, SignedHeaders and Signature",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(invalid(format!(
            "the credential '{credential}' is not <key>/<date>/<region>/<service>/aws4_request"
        )));
    };
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if signed_headers.iter().any(|h| h.is_empty()) {
        return Err(invalid("SignedHeaders has an empty name"));
    }
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`) as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// A request whose headers passed: a known, live access key, a well-formed
/// signature scoped to this region and service, a time within [`MAX_SKEW`]. What is
/// left is the signature itself, which needs the body ([`Checked::verify`]).
pub struct Checked {
    caller: Caller,
    secret: String,
    access_key_id: String,
    signed_headers: Vec<String>,
    signature: String,
    time: SystemTime,
}

/// Checks everything the headers alone can tell, before the body is read: an
/// unknown or revoked key, a stale or misscoped signature never makes the gateway
/// read a body.
pub async fn check_headers(state: &AppState, parts: &Parts) -> Result<Checked, LambdaError> {
    check_headers_at(state, parts, SystemTime::now()).await
}

async fn check_headers_at(
    state: &AppState,
    parts: &Parts,
    now: SystemTime,
) -> Result<Checked, LambdaError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(LambdaError::missing_token)?
        .to_str()
        .map_err(|_| invalid("the Authorization header is not text"))?;
    let auth = parse(header)?;
    let amz_date = parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("the request has no X-Amz-Date header"))?;
    let time = parse_amz_date(amz_date)
        .ok_or_else(|| invalid(format!("X-Amz-Date '{amz_date}' is not YYYYMMDDTHHMMSSZ")))?;
    let skew = now
        .duration_since(time)
        .or_else(|_| time.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        return Err(invalid(format!(
            "Signature expired: {amz_date} is more than 5 minutes from the server's time"
        )));
    }
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(invalid(
            "the credential's date is not the date of X-Amz-Date",
        ));
    }
    if auth.service != "lambda" {
        return Err(invalid(format!(
            "Credential should be scoped to correct service: 'lambda', not '{}'",
            auth.service
        )));
    }
    let region = state.region.name.as_str();
    if auth.region != region {
        return Err(invalid(format!(
            "Credential should be scoped to a valid region: '{region}', not '{}'",
            auth.region
        )));
    }
    let Some((caller, secret)) = state
        .auth
        .access_key(&state.db, &state.identity_box, auth.access_key_id)
        .await
        .map_err(LambdaError::from_core)?
    else {
        return Err(LambdaError::unrecognized_client());
    };
    Ok(Checked {
        caller,
        secret,
        access_key_id: auth.access_key_id.to_string(),
        signed_headers: auth.signed_headers.iter().map(|h| h.to_string()).collect(),
        signature: auth.signature.to_string(),
        time,
    })
}

impl Checked {
    /// The caller the key stands for (not yet proven: see [`Checked::verify`]).
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Signs the request again with the key's secret and compares: the caller if
    /// the signatures match. `body` is the whole body.
    pub fn verify(
        self,
        state: &AppState,
        parts: &Parts,
        body: &[u8],
    ) -> Result<Caller, LambdaError> {
        // The headers the client signed, as it sent them (repeated ones joined).
        let mut headers: Vec<(&str, String)> = Vec::with_capacity(self.signed_headers.len());
        for name in &self.signed_headers {
            let values: Vec<&str> = parts
                .headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                return Err(invalid(format!(
                    "the signed header '{name}' is not in the request"
                )));
            }
            headers.push((name, values.join(",")));
        }
        let uri = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        let signable = SignableRequest::new(
            parts.method.as_str(),
            uri,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| invalid(format!("the request cannot be signed: {e}")))?;
        let identity = aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret,
            None,
            None,
            "nimbus",
        )
        .into();
        let mut settings = SigningSettings::default();
        // Sign exactly the headers the client did (it chose which to leave out).
        settings.excluded_headers = Some(Vec::new());
        settings.percent_encoding_mode = PercentEncodingMode::Double;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&state.region.name)
            .name("lambda")
            .time(self.time)
            .settings(settings)
            .build()
            .map_err(|e| invalid(format!("the request cannot be signed: {e}")))?
            .into();
        let expected = sign(signable, &params)
            .map_err(|e| invalid(format!("the request cannot be signed: {e}")))?
            .into_parts()
            .1;
        if !bool::from(expected.as_bytes().ct_eq(self.signature.as_bytes())) {
            return Err(invalid(
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method.",
            ));
        }
        Ok(self.caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_sdk_authorization_header() {
        let h = "AWS4-HMAC-SHA256 Credential=NMBK0123456789ABCDEF/20261130/local/lambda/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=abcd";
        let a = parse(h).unwrap();
        assert_eq!(
            a,
            Authorization {
                access_key_id: "NMBK0123456789ABCDEF",
                date: "20261130",
                region: "local",
                service: "lambda",
                signed_headers: vec!["content-type", "host", "x-amz-date"],
                signature: "abcd",
            }
        );
        for bad in [
            "Bearer x",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, Signature=x",
            "AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=x",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host;;x, Signature=x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_amz_dates() {
        let t = parse_amz_date("20261130T120000Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_796_040_000
        );
        assert!(parse_amz_date("2026-11-30T12:00:00Z").is_none());
    }
}
