//! What a trigger is made of: its spec, checked before it is stored, and the names
//! of the buckets and queues it listens to.

use serde_json::{Value, json};

use nimbus_core::model::parse_cron;

/// HTTP methods an http trigger may take.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// A trigger as created: its kind, its settings as stored, and its route (http).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// "http" or "timer".
    pub kind: &'static str,
    /// The normalised settings.
    pub config: Value,
    /// The http path.
    pub route: Option<String>,
}

/// Checks a trigger body. The error is a sentence for the caller.
pub fn validate(body: &Value) -> Result<Spec, String> {
    let obj = body.as_object().ok_or("a trigger is a JSON object")?;
    let allowed = |keys: &[&str]| -> Result<(), String> {
        match obj.keys().find(|k| !keys.contains(&k.as_str())) {
            Some(k) => Err(format!("unknown field '{k}' for this trigger type")),
            None => Ok(()),
        }
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("http") => {
            allowed(&["type", "path", "methods", "auth"])?;
            let path = obj
                .get("path")
                .and_then(Value::as_str)
                .ok_or("an http trigger needs a path, such as \"/hello\"")?;
            let ok_char = |c: char| c.is_ascii_alphanumeric() || "/-_.~".contains(c);
            if !path.starts_with('/')
                || path.len() > 256
                || !path.chars().all(ok_char)
                || path.contains("//")
                || path.split('/').any(|s| s == "." || s == "..")
            {
                return Err(format!(
                    "path '{path}' must start with / and use only letters, digits, / - _ . ~"
                ));
            }
            let methods: Vec<String> = match obj.get("methods") {
                None => vec!["GET".into(), "POST".into()],
                Some(Value::Array(ms)) if !ms.is_empty() => {
                    let mut out = Vec::new();
                    for m in ms {
                        let m = m
                            .as_str()
                            .ok_or("methods are strings")?
                            .to_ascii_uppercase();
                        if !METHODS.contains(&m.as_str()) {
                            return Err(format!(
                                "method '{m}' is not one of {}",
                                METHODS.join(", ")
                            ));
                        }
                        if !out.contains(&m) {
                            out.push(m);
                        }
                    }
                    out
                }
                Some(_) => return Err("methods is a non-empty list, such as [\"GET\"]".into()),
            };
            let auth = match obj.get("auth").map(|a| a.as_str()) {
                None => "key",
                Some(Some("key")) => "key",
                Some(Some("none")) => "none",
                _ => {
                    return Err(
                        "auth is \"key\" (an API key of the tenant) or \"none\" (public)".into(),
                    );
                }
            };
            let path = if path.len() > 1 {
                path.trim_end_matches('/')
            } else {
                path
            };
            Ok(Spec {
                kind: "http",
                config: json!({"type": "http", "path": path, "methods": methods, "auth": auth}),
                route: Some(path.to_string()),
            })
        }
        Some("timer") => {
            allowed(&["type", "cron"])?;
            let cron = obj
                .get("cron")
                .and_then(Value::as_str)
                .ok_or("a timer trigger needs a cron pattern, such as \"*/5 * * * * *\"")?;
            parse_cron(cron)?;
            Ok(Spec {
                kind: "timer",
                config: json!({"type": "timer", "cron": cron}),
                route: None,
            })
        }
        Some("storage") => {
            allowed(&["type", "bucket", "events", "prefix", "suffix"])?;
            let bucket = obj
                .get("bucket")
                .and_then(Value::as_str)
                .ok_or("a storage trigger needs a bucket")?;
            validate_bucket_name(bucket)?;
            let events: Vec<String> = match obj.get("events") {
                None => vec!["put".into()],
                Some(Value::Array(es)) if !es.is_empty() => {
                    let mut out = Vec::new();
                    for e in es {
                        match e.as_str() {
                            Some(e @ ("put" | "delete")) => {
                                if !out.iter().any(|o| o == e) {
                                    out.push(e.to_string());
                                }
                            }
                            _ => return Err("events are \"put\" and/or \"delete\"".into()),
                        }
                    }
                    out
                }
                Some(_) => {
                    return Err(
                        "events is a non-empty list: [\"put\"], [\"delete\"] or both".into(),
                    );
                }
            };
            let text = |k: &str| -> Result<String, String> {
                match obj.get(k) {
                    None | Some(Value::Null) => Ok(String::new()),
                    Some(Value::String(s)) if s.len() <= 1024 => Ok(s.clone()),
                    _ => Err(format!("{k} is a string of at most 1024 bytes")),
                }
            };
            Ok(Spec {
                kind: "storage",
                config: json!({"type": "storage", "bucket": bucket, "events": events,
                               "prefix": text("prefix")?, "suffix": text("suffix")?}),
                route: None,
            })
        }
        Some("queue") => {
            allowed(&["type", "queue"])?;
            let queue = obj
                .get("queue")
                .and_then(Value::as_str)
                .ok_or("a queue trigger needs a queue")?;
            validate_queue_name(queue)?;
            Ok(Spec {
                kind: "queue",
                config: json!({"type": "queue", "queue": queue}),
                // One consumer function per queue in a tenant.
                route: Some(format!("queue:{queue}")),
            })
        }
        Some(other) => Err(format!(
            "trigger type '{other}' is unknown: use http, timer, queue or storage"
        )),
        None => Err("a trigger needs a type: http, timer, queue or storage".into()),
    }
}

/// Checks a bucket name (S3's rules: 3–63 of a-z, 0-9, '.', '-', starting and ending
/// with a letter or digit).
pub fn validate_bucket_name(name: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bucket name '{name}' must be 3 to 63 of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
        ))
    }
}

/// Checks a tenant queue's name.
pub fn validate_queue_name(name: &str) -> Result<(), String> {
    if (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err(format!(
            "queue name '{name}' must be 1 to 64 of letters, digits, '-' and '_'"
        ))
    }
}

/// The bus queue (without the deployment prefix) holding a tenant queue's messages.
pub fn tenant_queue(tenant_id: &str, queue: &str) -> String {
    format!(
        "{}{tenant_id}.{queue}",
        nimbus_core::bus::TENANT_QUEUE_PREFIX
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_triggers() {
        let ok = validate(&json!({"type": "http", "path": "/hello/", "methods": ["get", "POST"]}))
            .unwrap();
        assert_eq!(ok.route.as_deref(), Some("/hello"));
        assert_eq!(ok.config["methods"], json!(["GET", "POST"]));
        assert_eq!(ok.config["auth"], "key");
        assert!(validate(&json!({"type": "timer", "cron": "*/5 * * * * *"})).is_ok());
        assert!(validate(&json!({"type": "timer", "cron": "0 12 * * MON"})).is_ok());
        let s =
            validate(&json!({"type": "storage", "bucket": "uploads", "prefix": "img/"})).unwrap();
        assert_eq!(s.config["events"], json!(["put"]));
        for bad in [
            json!({"type": "carrier-pigeon"}),
            json!({"path": "/x"}),
            json!({"type": "timer", "cron": "every day"}),
            json!({"type": "timer", "cron": "61 * * * * *"}),
            json!({"type": "http", "path": "no-slash"}),
            json!({"type": "http", "path": "/a/../b"}),
            json!({"type": "http", "path": "/a", "methods": ["BREW"]}),
            json!({"type": "http", "path": "/a", "auth": "maybe"}),
            json!({"type": "http", "path": "/a", "extra": 1}),
            json!({"type": "queue", "queue": "bad name"}),
            json!({"type": "storage", "bucket": "UP"}),
            json!({"type": "storage", "bucket": "uploads", "events": ["copy"]}),
        ] {
            assert!(validate(&bad).is_err(), "{bad}");
        }
    }
}
