//! HTTP triggers: requests on a public route as proxy events, results as responses.

use bytes::Bytes;
use serde_json::{Map, Value, json};

/// The proxy event of an HTTP request (API Gateway's format).
pub fn proxy_event(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Value {
    let mut hs = Map::new();
    for (k, v) in headers {
        // Repeated headers are joined, as API Gateway does.
        match hs.get_mut(k) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(v);
            }
            _ => {
                hs.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    let mut qs = Map::new();
    for (k, v) in url_pairs(query.unwrap_or_default()) {
        qs.insert(k, Value::String(v));
    }
    let (body, b64) = match std::str::from_utf8(body) {
        Ok(s) => (Value::String(s.to_string()), false),
        Err(_) => {
            use base64::Engine as _;
            (
                Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
                true,
            )
        }
    };
    json!({
        "httpMethod": method,
        "path": path,
        "headers": hs,
        "queryStringParameters": if qs.is_empty() { Value::Null } else { Value::Object(qs) },
        "body": if body == "" { Value::Null } else { body },
        "isBase64Encoded": b64,
    })
}

/// Decodes `%XX` escapes and `+` (a space), as in query strings and S3 event keys;
/// a malformed escape stays as it is.
pub fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `a=1&b=x%20y` (later duplicates win).
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// What an http trigger answers.
#[derive(Debug, PartialEq)]
pub struct ProxyResponse {
    /// The status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// An HTTP response from a function's result: `{statusCode, headers, body,
/// isBase64Encoded}`, or, for any other result, 200 with the result as JSON.
pub fn proxy_response(result: &[u8]) -> Result<ProxyResponse, String> {
    let v: Value = serde_json::from_slice(result).map_err(|_| "the result is not JSON")?;
    let Some(obj) = v.as_object().filter(|o| o.contains_key("statusCode")) else {
        return Ok(ProxyResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::copy_from_slice(result),
        });
    };
    let status = obj["statusCode"]
        .as_u64()
        .filter(|s| (100..=599).contains(s))
        .ok_or("statusCode must be a number from 100 to 599")? as u16;
    let mut headers = Vec::new();
    if let Some(h) = obj.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            headers.push((k.clone(), v));
        }
    }
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if obj.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            use base64::Engine as _;
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|_| "body is not valid base64")?,
            )
        }
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    Ok(ProxyResponse {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_events_and_responses() {
        let ev = proxy_event(
            "POST",
            "/hello",
            &[("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
            Some("q=a%20b&flag&n=1+2"),
            &[0xff, 0x00],
        );
        assert_eq!(ev["headers"]["x-a"], "1,2");
        assert_eq!(
            ev["queryStringParameters"],
            json!({"q": "a b", "flag": "", "n": "1 2"})
        );
        assert_eq!(
            (ev["body"].as_str(), ev["isBase64Encoded"].as_bool()),
            (Some("/wA="), Some(true))
        );
        let r = proxy_response(
            br#"{"statusCode": 201, "headers": {"x-b": "c"}, "body": "aGk=", "isBase64Encoded": true}"#,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.headers, &r.body[..]),
            (201, vec![("x-b".into(), "c".into())], &b"hi"[..])
        );
        let r = proxy_response(br#"{"plain": true}"#).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &br#"{"plain": true}"#[..]));
        assert!(proxy_response(br#"{"statusCode": 99}"#).is_err());
        assert_eq!(percent_decode("a%20b+c%zz%4"), "a b c%zz%4");
    }
}
