//! The control-plane message bus.
//!
//! Two kinds of traffic:
//! - **work queues** ([`Bus::publish`], [`Bus::consume`]): durable, at-least-once.
//!   A consumer acks a delivery only after its effect is committed; a delivery that is
//!   neither acked nor nacked (the consumer died) comes back.
//! - **topics** ([`Bus::broadcast`], [`Bus::subscribe`]): every current subscriber gets
//!   each message, nothing is stored. Used for cache invalidation. After a reconnect a
//!   subscriber receives [`Broadcast::Gap`]: events may have been missed, so flush.
//!
//! [`memory::MemoryBus`] serves `nimbus up`; [`amqp::AmqpBus`] is RabbitMQ.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub mod amqp;
pub mod memory;

/// Well-known queue and topic names (the backend adds the configured prefix).
pub mod names {
    /// Step commands for a service: `step.code`, `step.resource`, `step.network`.
    pub fn step_queue(service: &str) -> String {
        format!("step.{service}")
    }
    /// Step results, consumed by the workflow engine.
    pub const RESULTS: &str = "workflow.results";
    /// Change events (cache invalidation), a topic.
    pub const CHANGES: &str = "changes";
}

/// Queues whose names start with this hold tenants' messages: they are bounded.
pub const TENANT_QUEUE_PREFIX: &str = "tq.";

/// Messages published and consumed, by queue or topic (tenants' queues as one).
static TRAFFIC: std::sync::LazyLock<(crate::metrics::Counters, crate::metrics::Counters)> =
    std::sync::LazyLock::new(|| {
        (
            crate::metrics::counters(
                "bus_published",
                "Messages published, by queue or topic and result (ok or failed)",
            ),
            crate::metrics::counters("bus_consumed", "Messages delivered to consumers, by queue"),
        )
    });

fn traffic_label(name: &str) -> String {
    if name.starts_with(TENANT_QUEUE_PREFIX) {
        "tenant_queues".into()
    } else {
        name.to_string()
    }
}

/// Counts a publish (either backend).
pub(crate) fn count_published(name: &str, ok: bool) {
    TRAFFIC
        .0
        .get_or_create(&vec![
            ("queue", traffic_label(name)),
            ("result", if ok { "ok" } else { "failed" }.to_string()),
        ])
        .inc();
}

/// Counts a delivery to a consumer (either backend).
pub(crate) fn count_consumed(queue: &str) {
    TRAFFIC
        .1
        .get_or_create(&vec![("queue", traffic_label(queue))])
        .inc();
}
/// Most messages a tenant queue holds; a message past it is refused
/// ([`BusError::Full`]) rather than stored (RabbitMQ: `x-max-length` with
/// `x-overflow: reject-publish`).
pub const TENANT_QUEUE_MAX_LENGTH: usize = 100_000;

/// Why the bus could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker could not be reached (after retrying).
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The broker refused the message (negative publisher confirm).
    #[error("broker refused the message on {0}")]
    Nacked(String),
    /// The bus is shutting down.
    #[error("bus closed")]
    Closed,
    /// A tenant queue holds [`TENANT_QUEUE_MAX_LENGTH`] messages already.
    #[error("the queue {0} is full")]
    Full(String),
}

/// Settles one delivery.
#[async_trait]
pub trait Settle: Send {
    /// The effect is committed: forget the message.
    async fn ack(self: Box<Self>);
    /// The message could not be handled. `requeue` hands it to another consumer;
    /// otherwise it goes to the dead-letter queue (poison).
    async fn nack(self: Box<Self>, requeue: bool);
}

/// One message taken from a work queue.
pub struct Delivery {
    /// The message body.
    pub payload: Vec<u8>,
    /// Whether it was delivered before and not acked.
    pub redelivered: bool,
    /// The publisher's trace context (`traceparent`), if it sent one.
    pub traceparent: Option<String>,
    settle: Box<dyn Settle>,
}

impl Delivery {
    /// Wraps a payload and its settlement.
    pub fn new(payload: Vec<u8>, redelivered: bool, settle: Box<dyn Settle>) -> Self {
        Delivery {
            payload,
            redelivered,
            traceparent: None,
            settle,
        }
    }

    /// With the publisher's trace context.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// Acks: the effect is committed.
    pub async fn ack(self) {
        self.settle.ack().await
    }

    /// Nacks; see [`Settle::nack`].
    pub async fn nack(self, requeue: bool) {
        self.settle.nack(requeue).await
    }
}

/// What a topic subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    /// One message.
    Message(Vec<u8>),
    /// The subscription was re-established; messages may have been missed.
    Gap,
}

/// The bus. Queue and topic names are given without the deployment prefix.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes to a durable work queue. Returns once the message is stored
    /// (for RabbitMQ: once the publisher confirm arrived).
    async fn publish(&self, queue: &str, payload: Vec<u8>) -> Result<(), BusError> {
        self.publish_traced(queue, payload, None).await
    }

    /// [`Bus::publish`] with the publisher's trace context, which the consumer's
    /// [`Delivery::traceparent`] carries (for RabbitMQ, the `traceparent` message
    /// header, as OpenTelemetry's messaging conventions put it).
    async fn publish_traced(
        &self,
        queue: &str,
        payload: Vec<u8>,
        traceparent: Option<String>,
    ) -> Result<(), BusError>;

    /// Starts consuming a work queue with at most `prefetch` unsettled deliveries.
    /// The receiver ends only when the bus shuts down; reconnects are hidden.
    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Delivery>, BusError>;

    /// Sends to every current subscriber of `topic`.
    async fn broadcast(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError>;

    /// Subscribes to `topic`.
    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<Broadcast>, BusError>;
}

/// A shared bus handle.
pub type DynBus = Arc<dyn Bus>;

/// Builds the configured bus.
pub async fn from_config(cfg: &crate::config::BusConfig) -> anyhow::Result<DynBus> {
    use crate::config::BusKind;
    Ok(match cfg.kind {
        BusKind::Memory => Arc::new(memory::MemoryBus::new()),
        BusKind::Amqp => {
            let url = cfg
                .url
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("bus.url is required for amqp"))?;
            Arc::new(amqp::AmqpBus::connect(url, &cfg.prefix).await?)
        }
    })
}
