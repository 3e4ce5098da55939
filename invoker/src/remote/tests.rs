//! The router's tests: placement, and calls on a fake node over its invoke stream
//! and unary.

use super::*;
use proto::node::node_server::{Node, NodeServer};
use proto::node::{DrainReply, NodeCapacity, PrewarmReply, StatusReply, StatusRequest};
use tonic::{Request, Response, Status};

/// A node that echoes events, over its stream (if it offers one) or unary.
/// Events steer it: `sleep` answers after 5 s; `break` fails the stream. A
/// `leaving` node ends its stream cleanly at its first frame, unanswered.
#[derive(Default)]
struct Fake {
    stream: bool,
    leaving: bool,
    unary_calls: AtomicU32,
    stream_calls: AtomicU32,
    cancels: Arc<Mutex<Vec<u64>>>,
}

fn reply(event: Bytes) -> InvokeReply {
    InvokeReply {
        result: event,
        ..Default::default()
    }
}

/// The service face of a shared [`Fake`].
struct FakeNode(Arc<Fake>);

#[tonic::async_trait]
impl Node for FakeNode {
    async fn invoke(&self, req: Request<InvokeRequest>) -> Result<Response<InvokeReply>, Status> {
        self.0.unary_calls.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(reply(req.into_inner().event)))
    }

    type InvokeStreamStream = tokio_stream::wrappers::ReceiverStream<Result<InvokeResult, Status>>;

    async fn invoke_stream(
        &self,
        req: Request<tonic::Streaming<InvokeFrame>>,
    ) -> Result<Response<Self::InvokeStreamStream>, Status> {
        if !self.0.stream {
            return Err(Status::unimplemented("no stream"));
        }
        let mut frames = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let me = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = frames.message().await {
                let Some(call) = frame.call else {
                    me.cancels.lock().unwrap().push(frame.id);
                    continue;
                };
                me.stream_calls.fetch_add(1, Ordering::Relaxed);
                if me.leaving {
                    return;
                }
                match &call.event[..] {
                    b"break" => {
                        let _ = tx.send(Err(Status::internal("broken"))).await;
                        return;
                    }
                    b"sleep" => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            let _ = tx.send(Ok(result_of(frame.id, call.event))).await;
                        });
                    }
                    _ => {
                        let _ = tx.send(Ok(result_of(frame.id, call.event))).await;
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn prewarm(&self, _: Request<PrewarmRequest>) -> Result<Response<PrewarmReply>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn drain(&self, _: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Err(Status::unimplemented(""))
    }
}

fn result_of(id: u64, event: Bytes) -> InvokeResult {
    InvokeResult {
        id,
        code: 0,
        message: String::new(),
        reply: Some(reply(event)),
    }
}

/// Serves `fake` on a port of its own; its address.
async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServer::new(FakeNode(fake)))
            .serve_with_incoming(proto::incoming(listener)),
    );
    addr
}

/// A router that knows `nodes` (id, address), the first preferred for the
/// function `f` below.
fn router(nodes: &[(&str, &str)]) -> RemoteNodes {
    let token = AddToken::new(None);
    let r = RemoteNodes {
        registry: RegistryClient::with_interceptor(
            channel("http://127.0.0.1:9").unwrap(),
            token.clone(),
        ),
        token,
        nodes: RwLock::new(Vec::new()),
        stream: true,
        empty_refresh: Mutex::new(None),
    };
    let mut list = Vec::new();
    for (id, address) in nodes {
        let info = NodeInfo {
            node_id: id.to_string(),
            address: address.to_string(),
            capacity: Some(NodeCapacity {
                memory_mb: 1024,
                instance_slots: 8,
            }),
            ..Default::default()
        };
        let n = Arc::new(r.node(&info).unwrap());
        // Preference: only the first node has an idle instance.
        n.set_seen(&instance_key(&f()), u32::from(list.is_empty()));
        list.push(n);
    }
    *r.nodes.write().unwrap() = list;
    r
}

fn f() -> FunctionRef {
    FunctionRef {
        tenant_id: "t".into(),
        function_name: "f".into(),
        code_sha256: "c".into(),
        memory_mb: 128,
        timeout_ms: 1000,
        ..Default::default()
    }
}

async fn call(r: &RemoteNodes, event: &'static [u8]) -> Result<InvokeOutcome, NodeError> {
    r.invoke(f(), Bytes::from_static(event), "req").await
}

#[tokio::test]
async fn small_events_go_on_the_stream_and_large_ones_unary() {
    let fake = Arc::new(Fake {
        stream: true,
        ..Default::default()
    });
    let r = router(&[("a", &serve(fake.clone()).await)]);
    for _ in 0..3 {
        assert_eq!(&call(&r, b"hello").await.unwrap().result[..], b"hello");
    }
    let big = Bytes::from(vec![b'x'; STREAM_EVENT_MAX + 1]);
    let o = r.invoke(f(), big.clone(), "req").await.unwrap();
    assert_eq!(o.result, big);
    assert_eq!(fake.stream_calls.load(Ordering::Relaxed), 3);
    assert_eq!(fake.unary_calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_node_without_the_stream_is_called_unary() {
    let fake = Arc::new(Fake::default());
    let r = router(&[("a", &serve(fake.clone()).await)]);
    for _ in 0..3 {
        assert_eq!(&call(&r, b"hello").await.unwrap().result[..], b"hello");
    }
    assert_eq!(fake.unary_calls.load(Ordering::Relaxed), 3);
    assert!(
        r.nodes.read().unwrap()[0]
            .unary_only
            .load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn a_caller_that_goes_away_cancels_its_call() {
    let fake = Arc::new(Fake {
        stream: true,
        ..Default::default()
    });
    let r = router(&[("a", &serve(fake.clone()).await)]);
    call(&r, b"warm").await.unwrap();
    let gone = tokio::time::timeout(Duration::from_millis(200), call(&r, b"sleep")).await;
    assert!(gone.is_err(), "the call was still running");
    for _ in 0..100 {
        if !fake.cancels.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*fake.cancels.lock().unwrap(), vec![1], "the node was told");
    // The stream goes on serving.
    assert_eq!(&call(&r, b"after").await.unwrap().result[..], b"after");
}

#[tokio::test]
async fn a_clean_end_sends_the_call_elsewhere_and_a_break_fails_it() {
    let (a, b) = (
        Arc::new(Fake {
            stream: true,
            leaving: true,
            ..Default::default()
        }),
        Arc::new(Fake {
            stream: true,
            ..Default::default()
        }),
    );
    let r = router(&[
        ("a", &serve(a.clone()).await),
        ("b", &serve(b.clone()).await),
    ]);
    // `a` ends its stream without answering: the call never started there.
    let o = call(&r, b"hello").await.unwrap();
    assert_eq!(&o.result[..], b"hello");
    assert_eq!(
        a.stream_calls.load(Ordering::Relaxed),
        1,
        "a was tried first"
    );
    assert_eq!(b.stream_calls.load(Ordering::Relaxed), 1, "b took it");
    // `b` breaks its stream: the call may have run, so it is not tried again.
    // (`a` is skipped for a while: it went away.)
    let e = call(&r, b"break").await.unwrap_err();
    assert!(e.to_string().contains("broke"), "{e}");
    assert_eq!(a.stream_calls.load(Ordering::Relaxed), 1);
    assert_eq!(b.stream_calls.load(Ordering::Relaxed), 2);
}

#[test]
fn rendezvous_hash_is_stable_and_spreads() {
    assert_eq!(fnv(&["a", "b"]), fnv(&["a", "b"]));
    assert_ne!(fnv(&["ab", ""]), fnv(&["a", "b"]));
    // 1,000 keys over 4 nodes: each node wins some.
    let nodes = ["n1", "n2", "n3", "n4"];
    let mut wins = HashMap::new();
    for k in 0..1000 {
        let key = format!("t/f/{k}/x");
        let best = nodes.iter().max_by_key(|n| fnv(&[&key, n])).unwrap();
        *wins.entry(*best).or_insert(0) += 1;
    }
    assert!(wins.values().all(|&w| w > 150), "{wins:?}");
}

/// A node that stops reading fills its stream's queue: a call waiting for room
/// fails at its deadline, and leaves nothing behind.
#[tokio::test]
async fn a_call_waiting_for_room_on_the_stream_ends_at_its_deadline() {
    let (frames, _unread) = mpsc::channel(1);
    frames.try_send(InvokeFrame { id: 0, call: None }).unwrap();
    let pipe = Pipe {
        frames,
        pending: Arc::new(Mutex::new(Some(HashMap::new()))),
        next: AtomicU64::new(1),
    };
    let t = Instant::now();
    let event = Bytes::from_static(b"{}");
    let call = stream_call(&pipe, f(), &event, "req", Duration::from_millis(100));
    let r = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call ended by its deadline");
    assert!(matches!(r, Err(Failure::Status(s)) if s.code() == Code::DeadlineExceeded));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(pipe.pending.lock().unwrap().as_ref().unwrap().is_empty());
}
