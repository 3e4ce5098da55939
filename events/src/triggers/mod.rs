//! Triggers: what starts a function besides a direct call, one file per kind.
//!
//! - [`http`]: a public route `/t/{tenant}{path}` (the gateway serves it) whose
//!   requests become API-Gateway-style proxy events, and whose results become HTTP
//!   responses ([`proxy_event`], [`proxy_response`]).
//! - [`timer`]: a cron pattern with seconds ([`TimerScheduler`]). Every process with a
//!   data path runs a scheduler; each tick fires once in the whole region, because a
//!   firing is a row keyed by (trigger, tick) and only one insert wins.
//! - [`storage`]: object events in a tenant bucket (the bucket API, or S3 webhooks),
//!   filtered by bucket, action, prefix and suffix ([`fire_storage`]); each match
//!   queues an asynchronous invocation with S3's event-notification shape.
//! - [`queue`]: a tenant queue's messages ([`QueueConsumers`]), acked once their
//!   invocation succeeded or became a dead letter.
//! - [`spec`]: what a trigger of each kind may say, validated.

pub mod http;
pub mod queue;
pub mod spec;
pub mod storage;
pub mod timer;

pub use self::http::{ProxyResponse, percent_decode, proxy_event, proxy_response};
pub use self::queue::QueueConsumers;
pub use self::spec::{Spec, tenant_queue, validate, validate_bucket_name, validate_queue_name};
pub use self::storage::{ObjectEvent, fire_storage};
pub use self::timer::TimerScheduler;
