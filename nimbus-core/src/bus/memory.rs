//! The in-process bus for `nimbus up`: the same semantics as RabbitMQ within one
//! process. An unsettled delivery that is dropped is requeued, as when a consumer's
//! connection dies; a nack without requeue moves the message to a dead-letter list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{Semaphore, broadcast, mpsc};

use super::{Broadcast, Bus, BusError, Delivery, Settle};

/// One stored message.
struct Msg {
    payload: Vec<u8>,
    redelivered: bool,
    traceparent: Option<String>,
}

/// Messages nacked without requeue, as (queue, payload).
type DeadLetters = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// One work queue: a multi-consumer channel.
struct Queue {
    tx: async_channel::Sender<Msg>,
    rx: async_channel::Receiver<Msg>,
}

/// The in-process bus.
#[derive(Default)]
pub struct MemoryBus {
    /// Work queues by name, created on first use.
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// Topics by name.
    topics: Mutex<HashMap<String, broadcast::Sender<Vec<u8>>>>,
    /// Messages nacked without requeue, by queue: the poison-message store.
    dead: DeadLetters,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        let mut queues = self.queues.lock().expect("bus lock");
        queues
            .entry(name.to_string())
            .or_insert_with(|| {
                let (tx, rx) = async_channel::unbounded();
                Arc::new(Queue { tx, rx })
            })
            .clone()
    }

    fn topic(&self, name: &str) -> broadcast::Sender<Vec<u8>> {
        let mut topics = self.topics.lock().expect("bus lock");
        topics
            .entry(name.to_string())
            .or_insert_with(|| broadcast::channel(4096).0)
            .clone()
    }

    /// Messages dead-lettered so far, as (queue, payload).
    pub fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        self.dead.lock().expect("bus lock").clone()
    }

    /// Messages waiting in a queue (not counting those being handled).
    pub fn depth(&self, queue: &str) -> usize {
        self.queue(queue).rx.len()
    }
}

/// Settlement of an in-memory delivery.
struct MemSettle {
    /// Where a requeued message goes back.
    queue: Arc<Queue>,
    name: String,
    /// A copy of the payload, to requeue or dead-letter.
    payload: Option<Vec<u8>>,
    /// The message's trace context, requeued with it.
    traceparent: Option<String>,
    dead: DeadLetters,
    /// Holds one prefetch slot until settled.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for MemSettle {
    async fn ack(mut self: Box<Self>) {
        self.payload = None;
    }

    async fn nack(mut self: Box<Self>, requeue: bool) {
        if let Some(payload) = self.payload.take() {
            if requeue {
                let _ = self.queue.tx.try_send(Msg {
                    payload,
                    redelivered: true,
                    traceparent: self.traceparent.take(),
                });
            } else {
                self.dead
                    .lock()
                    .expect("bus lock")
                    .push((self.name.clone(), payload));
            }
        }
    }
}

impl Drop for MemSettle {
    fn drop(&mut self) {
        // Dropped unsettled: the consumer went away, so the message comes back.
        if let Some(payload) = self.payload.take() {
            let _ = self.queue.tx.try_send(Msg {
                payload,
                redelivered: true,
                traceparent: self.traceparent.take(),
            });
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish_traced(
        &self,
        queue: &str,
        payload: Vec<u8>,
        traceparent: Option<String>,
    ) -> Result<(), BusError> {
        let q = self.queue(queue);
        if queue.starts_with(super::TENANT_QUEUE_PREFIX)
            && q.rx.len() >= super::TENANT_QUEUE_MAX_LENGTH
        {
            super::count_published(queue, false);
            return Err(BusError::Full(queue.to_string()));
        }
        let r =
            q.tx.send(Msg {
                payload,
                redelivered: false,
                traceparent,
            })
            .await
            .map_err(|_| BusError::Closed);
        super::count_published(queue, r.is_ok());
        r
    }

    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Delivery>, BusError> {
        let q = self.queue(queue);
        let name = queue.to_string();
        let dead = self.dead.clone();
        let slots = Arc::new(Semaphore::new(prefetch.max(1) as usize));
        let (tx, rx) = mpsc::channel(prefetch.max(1) as usize);
        tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let msg = tokio::select! {
                    m = q.rx.recv() => match m { Ok(m) => m, Err(_) => return },
                    _ = tx.closed() => return,
                };
                let settle = MemSettle {
                    queue: q.clone(),
                    name: name.clone(),
                    payload: Some(msg.payload.clone()),
                    traceparent: msg.traceparent.clone(),
                    dead: dead.clone(),
                    _permit: permit,
                };
                super::count_consumed(&name);
                let delivery = Delivery::new(msg.payload, msg.redelivered, Box::new(settle))
                    .with_traceparent(msg.traceparent);
                if tx.send(delivery).await.is_err() {
                    // The consumer is gone; the delivery's drop requeued the message.
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn broadcast(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError> {
        // No subscribers is fine: nothing is cached anywhere.
        let _ = self.topic(topic).send(payload);
        super::count_published(topic, true);
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<Broadcast>, BusError> {
        let mut sub = self.topic(topic).subscribe();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let item = match sub.recv().await {
                    Ok(m) => Broadcast::Message(m),
                    Err(broadcast::error::RecvError::Lagged(_)) => Broadcast::Gap,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ack_nack_and_drop_requeue() {
        let bus = MemoryBus::new();
        bus.publish("q", b"a".to_vec()).await.unwrap();
        let mut rx = bus.consume("q", 1).await.unwrap();
        let d = rx.recv().await.unwrap();
        assert!(!d.redelivered);
        d.nack(true).await;
        let d = rx.recv().await.unwrap();
        assert!(d.redelivered);
        drop(d);
        let d = rx.recv().await.unwrap();
        assert_eq!(d.payload, b"a");
        d.nack(false).await;
        assert_eq!(bus.dead_letters().len(), 1);
        bus.publish("q", b"b".to_vec()).await.unwrap();
        let d = rx.recv().await.unwrap();
        d.ack().await;
        assert_eq!(bus.depth("q"), 0);
    }

    #[tokio::test]
    async fn a_tenant_queue_is_bounded_and_others_are_not() {
        let bus = MemoryBus::new();
        let q = format!("{}t1.orders", super::super::TENANT_QUEUE_PREFIX);
        for _ in 0..super::super::TENANT_QUEUE_MAX_LENGTH {
            bus.publish(&q, vec![1]).await.unwrap();
        }
        assert!(matches!(
            bus.publish(&q, vec![1]).await,
            Err(BusError::Full(_))
        ));
        // Consuming one makes room for one.
        let mut rx = bus.consume(&q, 1).await.unwrap();
        rx.recv().await.unwrap().ack().await;
        bus.publish(&q, vec![1]).await.unwrap();
        // The platform's own queues are not tenant queues.
        for _ in 0..super::super::TENANT_QUEUE_MAX_LENGTH + 1 {
            bus.publish("invoke.async", vec![1]).await.unwrap();
        }
    }

    #[tokio::test]
    async fn broadcast_reaches_every_subscriber() {
        let bus = MemoryBus::new();
        let mut a = bus.subscribe("t").await.unwrap();
        let mut b = bus.subscribe("t").await.unwrap();
        bus.broadcast("t", b"x".to_vec()).await.unwrap();
        assert_eq!(a.recv().await.unwrap(), Broadcast::Message(b"x".to_vec()));
        assert_eq!(b.recv().await.unwrap(), Broadcast::Message(b"x".to_vec()));
    }
}
