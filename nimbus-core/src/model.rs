//! Domain types and their validation rules, shared by the gateway, the workflow and
//! the services. The rules are the contract's (`API.md`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Smallest memory size a function may have, in MB.
pub const MIN_MEMORY_MB: u32 = 64;
/// Largest memory size a function may have, in MB.
pub const MAX_MEMORY_MB: u32 = 3072;
/// Shortest timeout, in ms.
pub const MIN_TIMEOUT_MS: u32 = 100;
/// Longest timeout (15 min), in ms.
pub const MAX_TIMEOUT_MS: u32 = 900_000;
/// Largest zipped code package.
pub const MAX_ZIP_BYTES: usize = 50 * 1024 * 1024;
/// Largest total of the package's files once unzipped.
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;
/// Largest size of all environment variables together (Lambda's 4 KiB).
pub const MAX_ENV_BYTES: usize = 4096;

static ENV_KEY_RE: LazyLock<regex_lite::Regex> = LazyLock::new(|| {
    regex_lite::Regex::new(r"^[a-zA-Z][a-zA-Z0-9_]{0,127}$").expect("static regex")
});

/// Checks a function, alias, tenant or key name: `[a-zA-Z0-9_-]{1,64}`.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    // Checked at every call (the invoke route's names): a byte loop, not a regex.
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what} '{}' is invalid: it must match [a-zA-Z0-9_-]{{1,64}}",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// A language runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// CPython 3, through the bundled bootstrap.
    Python3,
    /// Node.js, through the bundled bootstrap.
    Nodejs,
    /// The package's own `bootstrap` executable speaking the Lambda Runtime API.
    Provided,
    /// A WASI command module run in process by wasmtime.
    Wasm,
}

impl Runtime {
    /// Every runtime, for error messages.
    pub const ALL: [Runtime; 4] = [
        Runtime::Python3,
        Runtime::Nodejs,
        Runtime::Provided,
        Runtime::Wasm,
    ];

    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python3 => "python3",
            Runtime::Nodejs => "nodejs",
            Runtime::Provided => "provided",
            Runtime::Wasm => "wasm",
        }
    }

    /// Checks the handler's form for this runtime and returns the file names, any one
    /// of which the package must contain.
    pub fn handler_files(self, handler: &str) -> Result<Vec<String>> {
        let bad = |why: &str| {
            Err(Error::Invalid(format!(
                "handler '{handler}' is invalid: {why}"
            )))
        };
        if handler.is_empty() || handler.len() > 128 {
            return bad("it must be 1 to 128 characters");
        }
        if handler.contains("..") || handler.starts_with('/') || handler.contains('\\') {
            return bad("it must name a file inside the package");
        }
        match self {
            Runtime::Python3 | Runtime::Nodejs => {
                let Some((module, func)) = handler.rsplit_once('.') else {
                    return bad("it must look like 'file.function'");
                };
                if module.is_empty()
                    || func.is_empty()
                    || !func.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return bad("it must look like 'file.function'");
                }
                Ok(if self == Runtime::Python3 {
                    vec![format!("{}.py", module.replace('.', "/"))]
                } else {
                    ["js", "mjs", "cjs"]
                        .iter()
                        .map(|ext| format!("{module}.{ext}"))
                        .collect()
                })
            }
            // `provided` always starts `bootstrap`; the handler is passed to it as _HANDLER.
            Runtime::Provided => Ok(vec!["bootstrap".to_string()]),
            Runtime::Wasm => {
                if !handler.ends_with(".wasm") {
                    return bad("for wasm it names the module file, e.g. 'module.wasm'");
                }
                Ok(vec![handler.to_string()])
            }
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Runtime {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Runtime::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "runtime '{s}' is not supported: use one of python3, nodejs, provided, wasm"
                ))
            })
    }
}

/// A caller's role. Each tenant role can do less than the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Invoke and read.
    Invoker,
    /// Also create, change, publish and delete functions.
    Developer,
    /// Also manage the tenant's API keys.
    Owner,
    /// Platform-wide: manages tenants, limits and every key.
    Admin,
}

impl Role {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Invoker => "invoker",
            Role::Developer => "developer",
            Role::Owner => "owner",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "invoker" => Ok(Role::Invoker),
            "developer" => Ok(Role::Developer),
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            _ => Err(Error::Invalid(format!(
                "role '{s}' is unknown: use admin, owner, developer or invoker"
            ))),
        }
    }
}

/// The life of a function's `$LATEST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FunctionState {
    /// Being created; not yet invocable.
    Pending,
    /// Ready.
    Active,
    /// Creation failed; see the reason.
    Failed,
    /// Being deleted.
    Deleting,
}

impl FunctionState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionState::Pending => "Pending",
            FunctionState::Active => "Active",
            FunctionState::Failed => "Failed",
            FunctionState::Deleting => "Deleting",
        }
    }

    /// The state a stored name names (None: not a state).
    pub fn parse(s: &str) -> Option<Self> {
        [
            FunctionState::Pending,
            FunctionState::Active,
            FunctionState::Failed,
            FunctionState::Deleting,
        ]
        .into_iter()
        .find(|f| f.as_str() == s)
    }
}

/// The state of a task or of one of its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Not started.
    Pending,
    /// In progress (for a step: its command is out).
    Running,
    /// Done.
    Succeeded,
    /// Failed for good (after retries and compensation).
    Failed,
    /// A step whose compensation is out.
    Compensating,
    /// A step that had succeeded and was undone by its compensation.
    Compensated,
}

impl TaskState {
    /// The name stored and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "Pending",
            TaskState::Running => "Running",
            TaskState::Succeeded => "Succeeded",
            TaskState::Failed => "Failed",
            TaskState::Compensating => "Compensating",
            TaskState::Compensated => "Compensated",
        }
    }
}

/// The largest monthly cap (GB-seconds or requests): large enough for any tenant,
/// small enough to fit the database's signed 64-bit integers with room to add.
pub const MAX_MONTHLY_CAP: u64 = 1_000_000_000_000_000;

/// Per-tenant limits, set by an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Concurrent invocations across all the tenant's functions.
    pub max_concurrency: u32,
    /// API calls per second (the burst is the same number).
    pub rate_per_sec: u32,
    /// Functions the tenant may have.
    pub max_functions: u32,
    /// The largest `memory_mb` one of the tenant's functions may ask for.
    pub max_memory_mb: u32,
    /// Asynchronous events waiting or running at once (past it, `429
    /// TooManyRequestsException`).
    #[serde(default = "Limits::default_max_queued_events")]
    pub max_queued_events: u32,
    /// Message queues (`POST /v1/queues/{q}/messages` names) the tenant may use.
    #[serde(default = "Limits::default_max_queues")]
    pub max_queues: u32,
    /// Buckets the tenant may have.
    #[serde(default = "Limits::default_max_buckets")]
    pub max_buckets: u32,
    /// Triggers the tenant may have.
    #[serde(default = "Limits::default_max_triggers")]
    pub max_triggers: u32,
    /// Objects in all the tenant's buckets.
    #[serde(default = "Limits::default_max_objects")]
    pub max_objects: u32,
    /// GB-seconds of invocations per calendar month (UTC); past it, invocations are
    /// refused with `429 QuotaExceeded`. None: no cap.
    #[serde(default)]
    pub monthly_gb_seconds: Option<u64>,
    /// Invocations per calendar month (UTC); past it, `429 QuotaExceeded`. None: no
    /// cap.
    #[serde(default)]
    pub monthly_requests: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrency: 100,
            rate_per_sec: 50,
            max_functions: 500,
            max_memory_mb: MAX_MEMORY_MB,
            max_queued_events: Self::default_max_queued_events(),
            max_queues: Self::default_max_queues(),
            max_buckets: Self::default_max_buckets(),
            max_triggers: Self::default_max_triggers(),
            max_objects: Self::default_max_objects(),
            monthly_gb_seconds: None,
            monthly_requests: None,
        }
    }
}

impl Limits {
    fn default_max_queued_events() -> u32 {
        10_000
    }

    fn default_max_queues() -> u32 {
        100
    }

    fn default_max_buckets() -> u32 {
        100
    }

    fn default_max_triggers() -> u32 {
        200
    }

    fn default_max_objects() -> u32 {
        100_000
    }

    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<()> {
        if self.max_concurrency == 0 || self.max_concurrency > 100_000 {
            return Err(Error::Invalid("max_concurrency must be 1..=100000".into()));
        }
        if self.rate_per_sec == 0 || self.rate_per_sec > 1_000_000 {
            return Err(Error::Invalid("rate_per_sec must be 1..=1000000".into()));
        }
        if self.max_functions > 100_000 {
            return Err(Error::Invalid("max_functions must be 0..=100000".into()));
        }
        if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&self.max_memory_mb) {
            return Err(Error::Invalid(format!(
                "max_memory_mb must be {MIN_MEMORY_MB}..={MAX_MEMORY_MB}"
            )));
        }
        for (name, v, max) in [
            ("max_queued_events", self.max_queued_events, 10_000_000),
            ("max_queues", self.max_queues, 100_000),
            ("max_buckets", self.max_buckets, 100_000),
            ("max_triggers", self.max_triggers, 100_000),
            ("max_objects", self.max_objects, 100_000_000),
        ] {
            if v > max {
                return Err(Error::Invalid(format!("{name} must be 0..={max}")));
            }
        }
        for (name, cap) in [
            ("monthly_gb_seconds", self.monthly_gb_seconds),
            ("monthly_requests", self.monthly_requests),
        ] {
            if cap.is_some_and(|c| c > MAX_MONTHLY_CAP) {
                return Err(Error::Invalid(format!(
                    "{name} must be 0..={MAX_MONTHLY_CAP}, or null for no cap"
                )));
            }
        }
        Ok(())
    }
}

/// Where asynchronous invocations go, and how they are retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AsyncConfig {
    /// Retries after the first attempt.
    #[serde(default = "AsyncConfig::default_max_retries")]
    pub max_retries: u32,
    /// The wait before retry k is `retry_base_delay_ms × 2^(k-1)`.
    #[serde(default = "AsyncConfig::default_retry_base_delay_ms")]
    pub retry_base_delay_ms: u64,
    /// Events older than this stop retrying.
    #[serde(default = "AsyncConfig::default_max_event_age_s")]
    pub max_event_age_s: u64,
    /// Invoked with the result of each success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Destination>,
    /// Invoked with each final failure (the disaster-recovery handler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Destination>,
    /// POSTed the result of each invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// A destination function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The function's name in the same tenant.
    pub function: String,
}

impl AsyncConfig {
    fn default_max_retries() -> u32 {
        2
    }
    fn default_retry_base_delay_ms() -> u64 {
        60_000
    }
    fn default_max_event_age_s() -> u64 {
        21_600
    }

    /// Checks ranges and destination names.
    pub fn validate(&self) -> Result<()> {
        if self.max_retries > 10 {
            return Err(Error::Invalid("async.max_retries must be 0..=10".into()));
        }
        if self.retry_base_delay_ms > 3_600_000 {
            return Err(Error::Invalid(
                "async.retry_base_delay_ms must be at most 3600000".into(),
            ));
        }
        if !(1..=21_600).contains(&self.max_event_age_s) {
            return Err(Error::Invalid(
                "async.max_event_age_s must be 1..=21600".into(),
            ));
        }
        for d in [&self.on_success, &self.on_failure].into_iter().flatten() {
            validate_name("destination function", &d.function)?;
        }
        if let Some(url) = &self.callback_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::Invalid(
                "async.callback_url must be an http:// or https:// URL".into(),
            ));
        }
        Ok(())
    }
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            max_retries: Self::default_max_retries(),
            retry_base_delay_ms: Self::default_retry_base_delay_ms(),
            max_event_age_s: Self::default_max_event_age_s(),
            on_success: None,
            on_failure: None,
            callback_url: None,
        }
    }
}

/// Checks a memory size.
pub fn validate_memory(memory_mb: u32, tenant_max: u32) -> Result<()> {
    if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&memory_mb) {
        return Err(Error::Invalid(format!(
            "memory_mb {memory_mb} is out of range: it must be {MIN_MEMORY_MB} to {MAX_MEMORY_MB}"
        )));
    }
    if memory_mb > tenant_max {
        return Err(Error::LimitExceeded(format!(
            "memory_mb {memory_mb} exceeds the tenant's limit of {tenant_max}"
        )));
    }
    Ok(())
}

/// Checks a timeout.
pub fn validate_timeout(timeout_ms: u32) -> Result<()> {
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(Error::Invalid(format!(
            "timeout_ms {timeout_ms} is out of range: it must be {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}"
        )));
    }
    Ok(())
}

/// The process models: `resident` instances serve call after call; a `one-shot`
/// instance is destroyed after its one call.
pub const PROCESS_MODELS: &[&str] = &["resident", "one-shot"];

/// Checks a process model.
pub fn validate_process_model(m: &str) -> Result<()> {
    if !PROCESS_MODELS.contains(&m) {
        return Err(Error::Invalid(format!(
            "process_model '{m}' is unknown: use resident or one-shot"
        )));
    }
    Ok(())
}

/// Variables the runtime sets, beyond the reserved prefixes (`AWS_`, `NIMBUS_`, `_`):
/// the names Lambda reserves.
pub const RESERVED_ENV: &[&str] = &["LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR"];

/// Checks environment variables: names (not reserved), and a total size of 4 KiB as
/// in Lambda.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<()> {
    let mut total = 0;
    for (k, v) in env {
        if !ENV_KEY_RE.is_match(k) {
            return Err(Error::Invalid(format!(
                "environment variable name '{}' is invalid: it must match [a-zA-Z][a-zA-Z0-9_]*",
                k.chars().take(80).collect::<String>()
            )));
        }
        if k.starts_with("AWS_")
            || k.starts_with("NIMBUS_")
            || k.starts_with("_")
            || RESERVED_ENV.contains(&k.as_str())
        {
            return Err(Error::Invalid(format!(
                "environment variable '{k}' is reserved by the platform"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_ENV_BYTES {
        return Err(Error::Invalid(format!(
            "environment variables total {total} bytes; the limit is {MAX_ENV_BYTES}"
        )));
    }
    Ok(())
}

/// A scheduled warm-up: from each time `cron` fires (UTC), `instances` of the
/// function (its `provisioned_qualifier`) are kept warm for `duration_s` seconds. Best effort (placed
/// like calls, not reserved); provisioned instances count toward it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduledWarmup {
    /// When the window opens: 5 fields, or 6 with seconds first, UTC.
    pub cron: String,
    /// Instances to keep warm, 1..=1000.
    pub instances: u32,
    /// How long the window stays open, 1..=86400 seconds.
    pub duration_s: u32,
}

/// Checks what provisioned concurrency applies to: `$LATEST`, a version number or an
/// alias name.
pub fn validate_qualifier(what: &str, q: &str) -> Result<()> {
    if q == "$LATEST" || (!q.is_empty() && q.len() <= 10 && q.chars().all(|c| c.is_ascii_digit())) {
        return Ok(());
    }
    validate_name(what, q)
}

/// Most scheduled warm-ups per function.
pub const MAX_WARMUPS: usize = 10;

/// Checks scheduled warm-ups (the cron patterns are parsed by the caller, which has
/// the cron parser).
pub fn validate_warmups(w: &[ScheduledWarmup]) -> Result<()> {
    if w.len() > MAX_WARMUPS {
        return Err(Error::Invalid(format!(
            "at most {MAX_WARMUPS} scheduled_warmups per function"
        )));
    }
    for x in w {
        if !(1..=1000).contains(&x.instances) {
            return Err(Error::Invalid(
                "scheduled_warmups[].instances must be 1..=1000".into(),
            ));
        }
        if !(1..=86_400).contains(&x.duration_s) {
            return Err(Error::Invalid(
                "scheduled_warmups[].duration_s must be 1..=86400".into(),
            ));
        }
    }
    Ok(())
}

/// Checks a reserved or provisioned concurrency.
pub fn validate_concurrency(what: &str, n: u32) -> Result<()> {
    if n > 10_000 {
        return Err(Error::Invalid(format!("{what} must be 0..=10000")));
    }
    Ok(())
}

/// Parses a cron pattern (5 fields, or 6 with seconds first).
pub fn parse_cron(pattern: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::new()
        .parse(pattern)
        .map_err(|e| format!("cron '{pattern}' is not valid: {e}"))
}

/// What an `UpdateConfig` task changes, as the gateway validated it and the engine
/// applies it: a field that is present is set, an absent one is kept. It travels in
/// the task's parameters as `changes`; an unknown key is refused, never dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    /// Memory, MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Timeout, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// The environment, sealed by the gateway to the function (stored as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// `Some(None)` removes the reservation.
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub reserved_concurrency: Option<Option<u32>>,
    /// Provisioned instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_concurrency: Option<u32>,
    /// `resident` or `one-shot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_model: Option<String>,
    /// What provisioned instances run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_qualifier: Option<String>,
    /// Replaces the scheduled warm-ups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_warmups: Option<Vec<ScheduledWarmup>>,
    /// Asynchronous invocation settings.
    #[serde(default, rename = "async", skip_serializing_if = "Option::is_none")]
    pub async_config: Option<AsyncConfig>,
    /// The description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The execution role ARN (Lambda-compatible API: kept, not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The runtime's name as given (e.g. `python3.13`), within the same runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_name: Option<String>,
}

/// Longest description.
pub const MAX_DESCRIPTION: usize = 256;

/// Checks a description (Lambda's limit: 256 characters).
pub fn validate_description(d: &str) -> Result<()> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(Error::Invalid(format!(
            "description is longer than {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(())
}

impl ConfigChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == ConfigChange::default()
    }
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`), with
/// `#[serde(default, with = "double_option")]`.
pub mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// `null` is `Some(None)`; a value is `Some(Some(v))`.
    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }

    /// `Some(None)` is `null` (skip `None` with `skip_serializing_if`).
    pub fn serialize<S, T>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        T: Serialize,
    {
        v.as_ref().and_then(Option::as_ref).serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("function", "hello-World_1").is_ok());
        assert!(validate_name("function", "").is_err());
        assert!(validate_name("function", "a b").is_err());
        assert!(validate_name("function", &"x".repeat(65)).is_err());
        assert!(validate_name("function", "../etc").is_err());
    }

    #[test]
    fn handlers() {
        assert_eq!(
            Runtime::Python3.handler_files("index.handler").unwrap(),
            vec!["index.py"]
        );
        assert_eq!(
            Runtime::Python3.handler_files("pkg.mod.run").unwrap(),
            vec!["pkg/mod.py"]
        );
        assert!(Runtime::Python3.handler_files("index").is_err());
        assert!(Runtime::Nodejs.handler_files("../x.handler").is_err());
        assert_eq!(
            Runtime::Provided.handler_files("anything").unwrap(),
            vec!["bootstrap"]
        );
        assert!(Runtime::Wasm.handler_files("module.py").is_err());
    }

    #[test]
    fn ranges() {
        assert!(validate_memory(63, 3072).is_err());
        assert!(validate_memory(128, 3072).is_ok());
        assert!(matches!(
            validate_memory(2048, 1024),
            Err(Error::LimitExceeded(_))
        ));
        assert!(validate_timeout(99).is_err());
        assert!(validate_timeout(900_001).is_err());
        assert!(validate_timeout(3000).is_ok());
        let mut env = BTreeMap::new();
        env.insert("AWS_REGION".into(), "x".into());
        assert!(validate_env(&env).is_err());
        env.clear();
        for k in [
            "_HANDLER",
            "LAMBDA_TASK_ROOT",
            "LAMBDA_RUNTIME_DIR",
            "NIMBUS_SPARE",
        ] {
            env.insert(k.into(), "x".into());
            assert!(validate_env(&env).is_err(), "{k} is reserved");
            env.clear();
        }
        // Inside its own sandbox a function may set what it likes for itself.
        env.insert("LD_PRELOAD".into(), "/var/task/x.so".into());
        assert!(validate_env(&env).is_ok());
        env.clear();
        env.insert("K".into(), "x".repeat(5000));
        assert!(validate_env(&env).is_err());
    }

    #[test]
    fn roles_order() {
        assert!(Role::Invoker < Role::Developer);
        assert!(Role::Developer < Role::Owner);
        assert!(Role::Owner < Role::Admin);
    }

    #[test]
    fn config_changes_round_trip_and_refuse_unknown_keys() {
        use super::ConfigChange;
        let c = ConfigChange {
            memory_mb: Some(256),
            reserved_concurrency: Some(None),
            ..Default::default()
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"memory_mb": 256, "reserved_concurrency": null})
        );
        assert_eq!(serde_json::from_value::<ConfigChange>(v).unwrap(), c);
        let kept: ConfigChange =
            serde_json::from_value(serde_json::json!({"timeout_ms": 5})).unwrap();
        assert_eq!(kept.reserved_concurrency, None);
        assert!(
            serde_json::from_value::<ConfigChange>(serde_json::json!({"memroy_mb": 1})).is_err()
        );
        assert!(ConfigChange::default().is_empty());
    }
}
