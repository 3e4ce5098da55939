//! The RabbitMQ bus against a real broker (127.0.0.1:5672, started by `.ci/run`).
//! Each test uses its own queue prefix and deletes what it declared.

use std::time::Duration;

use nimbus_core::bus::amqp::AmqpBus;
use nimbus_core::bus::{Broadcast, Bus};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn prefix() -> String {
    format!("bt{:x}{:04x}", std::process::id(), rand::random::<u16>())
}

async fn cleanup(prefix: &str, queues: &[&str]) {
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in queues.iter().chain(&["dead-letters"]) {
        let _ = ch
            .queue_delete(format!("{prefix}.{q}").as_str().into(), Default::default())
            .await;
    }
    for x in ["dlx", "topic.t"] {
        let _ = ch
            .exchange_delete(format!("{prefix}.{x}").as_str().into(), Default::default())
            .await;
    }
}

async fn recv<T>(rx: &mut tokio::sync::mpsc::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out")
        .expect("closed")
}

#[tokio::test]
async fn work_queue_semantics() {
    let p = prefix();
    let bus = AmqpBus::connect(AMQP, &p).await.unwrap();
    bus.publish("q", b"one".to_vec()).await.unwrap();
    let mut rx = bus.consume("q", 4).await.unwrap();

    // Nack with requeue: the same message comes back, marked redelivered.
    let d = recv(&mut rx).await;
    assert_eq!((d.payload.as_slice(), d.redelivered), (&b"one"[..], false));
    d.nack(true).await;
    let d = recv(&mut rx).await;
    assert!(d.redelivered);

    // Unsettled when the consumer goes away: redelivered to the next consumer.
    drop(rx);
    drop(d);
    let mut rx = bus.consume("q", 4).await.unwrap();
    let d = recv(&mut rx).await;
    assert_eq!(d.payload, b"one");
    d.ack().await;

    // A poison message (nack without requeue) lands in the dead-letter queue.
    bus.publish("q", b"poison".to_vec()).await.unwrap();
    recv(&mut rx).await.nack(false).await;
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut got = None;
    for _ in 0..50 {
        if let Some(m) = ch
            .basic_get(
                format!("{p}.dead-letters").as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            got = Some(m.delivery.data.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.as_deref(), Some(&b"poison"[..]));

    // Nothing else is left in the queue.
    bus.publish("q", b"last".to_vec()).await.unwrap();
    let d = recv(&mut rx).await;
    assert_eq!(d.payload, b"last");
    d.ack().await;
    drop(rx);
    cleanup(&p, &["q"]).await;
}

#[tokio::test]
async fn broadcast_reaches_every_subscriber() {
    let p = prefix();
    let bus = AmqpBus::connect(AMQP, &p).await.unwrap();
    let mut a = bus.subscribe("t").await.unwrap();
    let mut b = bus.subscribe("t").await.unwrap();
    bus.broadcast("t", b"evict".to_vec()).await.unwrap();
    assert_eq!(recv(&mut a).await, Broadcast::Message(b"evict".to_vec()));
    assert_eq!(recv(&mut b).await, Broadcast::Message(b"evict".to_vec()));
    drop((a, b));
    cleanup(&p, &[]).await;
}

#[tokio::test]
async fn unreachable_broker_is_a_clear_error() {
    let err = AmqpBus::connect("amqp://guest:guest@127.0.0.1:1/%2f", "x")
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("RabbitMQ"), "{err}");
}
