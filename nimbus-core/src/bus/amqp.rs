//! RabbitMQ backend.
//!
//! - Work queues are durable **quorum** queues with a delivery limit; a message nacked
//!   without requeue, or redelivered past the limit (a poison message), goes through the
//!   dead-letter exchange `{prefix}.dlx` into `{prefix}.dead-letters`.
//! - Every publish waits for the broker's publisher confirm and is persistent.
//! - Consumers ack manually, after the caller committed the effect.
//! - Lost connections (a broker restart) are re-established with backoff, by
//!   publishers and consumers alike; unacked deliveries of the dead connection are
//!   redelivered by the broker.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::{Mutex, mpsc};

use super::{Broadcast, Bus, BusError, Delivery, Settle};

/// How long a publish keeps retrying through a broker outage before it reports failure.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);
/// Redeliveries after which a message is treated as poison and dead-lettered.
const DELIVERY_LIMIT: i64 = 20;

/// The RabbitMQ bus.
pub struct AmqpBus {
    /// Broker URL.
    url: String,
    /// Prefix of every queue and exchange name.
    prefix: String,
    /// The publishing connection and its confirm-mode channel; None after a failure.
    publisher: Mutex<Option<Publisher>>,
}

/// A live publishing channel and what has been declared on its connection.
struct Publisher {
    /// Kept so the connection lives as long as the channel.
    _conn: Connection,
    channel: Channel,
    declared: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl AmqpBus {
    /// Connects and declares the dead-letter topology. Fails if the broker is down now.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let bus = AmqpBus {
            url: url.to_string(),
            prefix: prefix.to_string(),
            publisher: Mutex::new(None),
        };
        bus.publisher_channel()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to RabbitMQ: {e}"))?;
        Ok(bus)
    }

    fn queue_name(&self, queue: &str) -> String {
        format!("{}.{queue}", self.prefix)
    }

    fn topic_exchange(&self, topic: &str) -> String {
        format!("{}.topic.{topic}", self.prefix)
    }

    async fn publisher_channel(
        &self,
    ) -> Result<(Channel, Arc<std::sync::Mutex<HashSet<String>>>), lapin::Error> {
        let mut guard = self.publisher.lock().await;
        if let Some(p) = guard.as_ref()
            && p.channel.status().connected()
        {
            return Ok((p.channel.clone(), p.declared.clone()));
        }
        let conn = open(&self.url).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_dead_letters(&channel, &self.prefix).await?;
        let declared = Arc::new(std::sync::Mutex::new(HashSet::new()));
        *guard = Some(Publisher {
            _conn: conn,
            channel: channel.clone(),
            declared: declared.clone(),
        });
        Ok((channel, declared))
    }

    async fn reset_publisher(&self) {
        *self.publisher.lock().await = None;
    }

    /// One publish attempt: declare the target if needed, publish, await the confirm.
    async fn try_publish(
        &self,
        target: &Target,
        payload: &[u8],
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let (channel, declared) = self.publisher_channel().await.map_err(PublishError::Conn)?;
        let key = match target {
            Target::Queue(q) => format!("q:{q}"),
            Target::Topic(t) => format!("t:{t}"),
        };
        let is_declared = declared.lock().expect("lock").contains(&key);
        if !is_declared {
            match target {
                Target::Queue(q) => declare_work_queue(&channel, q, &self.prefix).await,
                Target::Topic(t) => declare_topic(&channel, t).await,
            }
            .map_err(PublishError::Conn)?;
            declared.lock().expect("lock").insert(key);
        }
        let (exchange, routing_key) = match target {
            Target::Queue(q) => (String::new(), q.clone()),
            Target::Topic(t) => (t.clone(), String::new()),
        };
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/x-protobuf".into());
        if let Some(t) = traceparent {
            let mut headers = FieldTable::default();
            headers.insert(crate::trace::HEADER.into(), AMQPValue::LongString(t.into()));
            props = props.with_headers(headers);
        }
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                props,
            )
            .await
            .map_err(PublishError::Conn)?
            .await
            .map_err(PublishError::Conn)?;
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }

    async fn publish_with_retry(
        &self,
        target: Target,
        payload: &[u8],
        traceparent: Option<&str>,
    ) -> Result<(), BusError> {
        let start = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.try_publish(&target, payload, traceparent).await {
                Ok(()) => return Ok(()),
                // A full tenant queue refuses at once; retrying would not help.
                Err(PublishError::Nacked) if matches!(&target, Target::Queue(q) if q.starts_with(&format!("{}.{}", self.prefix, super::TENANT_QUEUE_PREFIX))) =>
                {
                    return Err(BusError::Full(target.name().to_string()));
                }
                Err(e) => {
                    if start.elapsed() > PUBLISH_DEADLINE {
                        return Err(match e {
                            PublishError::Nacked => BusError::Nacked(target.name().to_string()),
                            PublishError::Conn(e) => BusError::Unreachable(e.to_string()),
                        });
                    }
                    tracing::warn!(target = target.name(), error = %e, "publish failed; retrying");
                    self.reset_publisher().await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

enum Target {
    Queue(String),
    Topic(String),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Queue(n) | Target::Topic(n) => n,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("{0}")]
    Conn(lapin::Error),
    #[error("negative confirm")]
    Nacked,
}

async fn open(url: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(url, ConnectionProperties::default()).await
}

fn work_queue_args(prefix: &str, name: &str) -> FieldTable {
    let mut args = FieldTable::default();
    if name
        .strip_prefix(prefix)
        .is_some_and(|n| n.starts_with(&format!(".{}", super::TENANT_QUEUE_PREFIX)))
    {
        // A tenant's queue is bounded: past the length, publishes are refused.
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(super::TENANT_QUEUE_MAX_LENGTH as i64),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{prefix}.dlx").into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args
}

async fn declare_dead_letters(channel: &Channel, prefix: &str) -> Result<(), lapin::Error> {
    let dlx = format!("{prefix}.dlx");
    let dlq = format!("{prefix}.dead-letters");
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(dlq.as_str().into(), QueueDeclareOptions::durable(), args)
        .await?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn declare_work_queue(
    channel: &Channel,
    name: &str,
    prefix: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            work_queue_args(prefix, name),
        )
        .await
        .map(|_| ())
}

async fn declare_topic(channel: &Channel, exchange: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Settlement through lapin's acker. Errors mean the channel died: the broker will
/// redeliver, which is the at-least-once contract.
struct AmqpSettle(lapin::Acker);

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) {
        if let Err(e) = self.0.ack(BasicAckOptions::default()).await {
            tracing::debug!(error = %e, "ack failed; the broker will redeliver");
        }
    }

    async fn nack(self: Box<Self>, requeue: bool) {
        let opts = BasicNackOptions {
            requeue,
            multiple: false,
        };
        if let Err(e) = self.0.nack(opts).await {
            tracing::debug!(error = %e, "nack failed; the broker will redeliver");
        }
    }
}

/// Runs one consumer session until the connection breaks or the receiver is gone.
/// Returns true when the receiver is gone (stop for good).
async fn consume_session(
    url: &str,
    prefix: &str,
    queue: &str,
    prefetch: u16,
    tx: &mpsc::Sender<Delivery>,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
) -> Result<bool, lapin::Error> {
    let conn = open(url).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await?;
    declare_dead_letters(&channel, prefix).await?;
    declare_work_queue(&channel, queue, prefix).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if let Some(r) = ready.take() {
        let _ = r.send(Ok(()));
    }
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(d)) => {
                    super::count_consumed(queue);
                    let traceparent = d
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| match h.inner().get(crate::trace::HEADER) {
                            Some(AMQPValue::LongString(v)) => {
                                std::str::from_utf8(v.as_bytes()).ok().map(str::to_string)
                            }
                            _ => None,
                        });
                    let delivery = Delivery::new(d.data, d.redelivered, Box::new(AmqpSettle(d.acker)))
                        .with_traceparent(traceparent);
                    if tx.send(delivery).await.is_err() {
                        let _ = conn.close(200, "consumer gone".into()).await;
                        return Ok(true);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(false),
            },
            _ = tx.closed() => {
                let _ = conn.close(200, "consumer gone".into()).await;
                return Ok(true);
            }
        }
    }
}

/// Runs one subscription session; see [`consume_session`].
async fn subscribe_session(
    url: &str,
    exchange: &str,
    tx: &mpsc::Sender<Broadcast>,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
) -> Result<bool, lapin::Error> {
    let conn = open(url).await?;
    let channel = conn.create_channel().await?;
    declare_topic(&channel, exchange).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let qname = queue.name().as_str().to_string();
    channel
        .queue_bind(
            qname.as_str().into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            qname.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    match ready.take() {
        Some(r) => {
            let _ = r.send(Ok(()));
        }
        // A re-established subscription: tell the subscriber it may have missed events.
        None => {
            if tx.send(Broadcast::Gap).await.is_err() {
                return Ok(true);
            }
        }
    }
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(d)) => {
                    if tx.send(Broadcast::Message(d.data)).await.is_err() {
                        let _ = conn.close(200, "subscriber gone".into()).await;
                        return Ok(true);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(false),
            },
            _ = tx.closed() => {
                let _ = conn.close(200, "subscriber gone".into()).await;
                return Ok(true);
            }
        }
    }
}

#[async_trait]
impl Bus for AmqpBus {
    async fn publish_traced(
        &self,
        queue: &str,
        payload: Vec<u8>,
        traceparent: Option<String>,
    ) -> Result<(), BusError> {
        let r = self
            .publish_with_retry(
                Target::Queue(self.queue_name(queue)),
                &payload,
                traceparent.as_deref(),
            )
            .await;
        super::count_published(queue, r.is_ok());
        r
    }

    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Delivery>, BusError> {
        let (tx, rx) = mpsc::channel(prefetch.max(1) as usize);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (url, prefix, queue) = (
            self.url.clone(),
            self.prefix.clone(),
            self.queue_name(queue),
        );
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut backoff = Duration::from_millis(100);
            loop {
                match consume_session(&url, &prefix, &queue, prefetch, &tx, &mut ready).await {
                    Ok(true) => return,
                    Ok(false) => {
                        tracing::warn!(%queue, "consumer cancelled by the broker; reconnecting")
                    }
                    Err(e) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e.to_string()));
                            return;
                        }
                        tracing::warn!(%queue, error = %e, "consumer lost its connection; reconnecting");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => Err(BusError::Unreachable(e)),
            Err(_) => Err(BusError::Closed),
        }
    }

    async fn broadcast(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError> {
        let r = self
            .publish_with_retry(Target::Topic(self.topic_exchange(topic)), &payload, None)
            .await;
        super::count_published(topic, r.is_ok());
        r
    }

    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<Broadcast>, BusError> {
        let (tx, rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (url, exchange) = (self.url.clone(), self.topic_exchange(topic));
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut backoff = Duration::from_millis(100);
            loop {
                match subscribe_session(&url, &exchange, &tx, &mut ready).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e.to_string()));
                            return;
                        }
                        tracing::warn!(%exchange, error = %e, "subscription lost; reconnecting");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => Err(BusError::Unreachable(e)),
            Err(_) => Err(BusError::Closed),
        }
    }
}
