//! The pools' decisions, without processes.

use super::*;

fn pools(max: usize) -> Pools {
    with_room(Room {
        max_instances: max,
        memory_mb: 1 << 20,
        max_starting: 100,
    })
}

fn with_room(room: Room) -> Pools {
    Pools::new(
        room,
        Learning {
            policy: keepalive::predictor::Policy::Fixed(600_000),
            bin_ms: 60_000,
            fallback_ms: 600_000,
        },
    )
}

fn f(version: &str) -> FunctionRef {
    FunctionRef {
        tenant_id: "t".into(),
        function_name: "f".into(),
        version: version.into(),
        memory_mb: 128,
        timeout_ms: 1_000,
        ..Default::default()
    }
}

#[test]
fn a_call_with_nothing_running_waits_and_asks_for_a_start() {
    let mut p = pools(4);
    let Take::Wait { start_now, rx: _rx } = p.take("t/f/1/a", &f("1")) else {
        panic!("no instance exists: the call waits");
    };
    assert!(start_now);
    assert!(p.start_slot("t/f/1/a"));
    // One waiter: one start is enough.
    assert!(!p.start_slot("t/f/1/a"));
    assert_eq!(p.live(), 1);
    assert_eq!(p.count("t/f/1/a"), (0, 1));
}

#[test]
fn starts_per_configuration_are_bounded() {
    let mut p = pools(100);
    let mut queue = Vec::new();
    for _ in 0..10 {
        queue.push(p.take("t/f/1/a", &f("1")));
    }
    let started = (0..10).filter(|_| p.start_slot("t/f/1/a")).count();
    assert_eq!(started, MAX_PARALLEL_STARTS);
    assert_eq!(p.live(), MAX_PARALLEL_STARTS);
    // A failed start is uncounted, and the oldest waiter hears of it.
    p.started("t/f/1/a", None);
    p.fail_oldest("t/f/1/a", NodeError::Init("boom".into()));
    assert_eq!(p.live(), MAX_PARALLEL_STARTS - 1);
    let Take::Wait { mut rx, .. } = queue.remove(0) else {
        panic!("waiting")
    };
    assert!(matches!(rx.try_recv(), Ok(Err(NodeError::Init(_)))));
}

#[test]
fn a_full_node_refuses_a_new_configuration_and_reservations_fit_its_room() {
    let mut p = pools(3);
    assert_eq!(p.reserve("t/f/1/a", &f("1"), 5), 3, "only the room");
    assert_eq!(p.live(), 3);
    assert!(matches!(p.take("t/g/1/b", &f("1")), Take::Full));
    // Waiters of a configuration already starting here queue instead.
    assert!(matches!(p.take("t/f/1/a", &f("1")), Take::Wait { .. }));
    assert_eq!(p.reserve("t/f/1/a", &f("1"), 5), 0);
    // Up or failed, the starts leave the count true.
    for _ in 0..3 {
        p.started("t/f/1/a", None);
    }
    assert_eq!(p.live(), 0);
}

#[test]
fn a_retired_busy_instance_leaves_the_count() {
    let mut p = pools(3);
    let _w = p.take("t/f/1/a", &f("1"));
    assert!(p.start_slot("t/f/1/a"));
    // Stand-in for a started instance handed to the waiter: count it busy.
    p.by_key.get_mut("t/f/1/a").expect("pool").starting -= 1;
    p.by_key.get_mut("t/f/1/a").expect("pool").busy += 1;
    assert_eq!(p.live(), 1);
    assert!(
        p.retire("t/f/1/a"),
        "a call still waits: another start is due"
    );
    assert_eq!(p.live(), 0);
}

#[test]
fn instances_are_admitted_by_the_memory_they_are_measured_to_use() {
    let mut p = with_room(Room {
        max_instances: 1_000,
        memory_mb: 100,
        max_starting: 100,
    });
    p.measured(20 * 1024);
    assert_eq!(p.reserve("t/f/1/a", &f("1"), 10), 5, "100 MB at 20 MB each");
    assert!(
        matches!(p.take("t/g/1/b", &f("1")), Take::Full),
        "no room, nothing idle to evict"
    );
    // Idle instances measured smaller: room for more.
    p.measured(10 * 1024);
    let waiting = p.take("t/g/1/b", &f("1"));
    assert!(matches!(waiting, Take::Wait { .. }));
    assert!(p.start_slot("t/g/1/b"));
    // The count's bound holds whatever memory says.
    let mut q = with_room(Room {
        max_instances: 3,
        memory_mb: 1 << 20,
        max_starting: 100,
    });
    q.measured(1024);
    assert_eq!(q.reserve("t/f/1/a", &f("1"), 10), 3);
}

#[test]
fn the_node_starts_no_more_at_once_than_it_may_and_defers_the_rest() {
    let mut p = with_room(Room {
        max_instances: 100,
        memory_mb: 1 << 20,
        max_starting: 2,
    });
    let _a: Vec<_> = (0..3).map(|_| p.take("t/f/1/a", &f("1"))).collect();
    let _b = p.take("t/g/1/b", &f("1"));
    assert!(p.start_slot("t/f/1/a"));
    assert!(p.start_slot("t/f/1/a"));
    assert!(
        !p.start_slot("t/g/1/b"),
        "two are starting: b waits its turn"
    );
    assert!(!p.start_slot("t/g/1/b"));
    assert_eq!(p.starting(), 2);
    // A start ends: b is asked again, once.
    p.started("t/f/1/a", None);
    let deferred = p.take_deferred();
    assert_eq!(deferred.len(), 1);
    assert_eq!(deferred[0].0, "t/g/1/b");
    assert!(p.take_deferred().is_empty());
    assert!(p.start_slot("t/g/1/b"));
}

#[tokio::test]
async fn under_memory_pressure_the_least_recently_used_idle_instances_go() {
    let mut p = with_room(Room {
        max_instances: 100,
        memory_mb: 100,
        max_starting: 100,
    });
    p.measured(10 * 1024);
    let mut made = Vec::new();
    for key in ["t/f/1/a", "t/g/1/b"] {
        assert_eq!(p.reserve(key, &f("1"), 3), 3);
        for _ in 0..3 {
            let inst = crate::instance::test_instance();
            made.push((key, inst.clone()));
            p.started(key, Some(Granted::warm(inst)));
        }
    }
    assert_eq!(p.live(), 6);
    let mut idle = IdleTime::default();
    let (dead, _) = p.reap(Duration::from_secs(3600), &mut idle);
    assert!(dead.is_empty(), "60 MB of 100: nothing to do");
    // The instances grew to 30 MB each: three fit.
    p.measured(30 * 1024);
    let (dead, _) = p.reap(Duration::from_secs(3600), &mut idle);
    assert_eq!(dead.len(), 3);
    for d in &dead {
        let (key, _) = made.iter().find(|(_, i)| Arc::ptr_eq(i, d)).expect("ours");
        assert_eq!(*key, "t/f/1/a", "the older configuration's go first");
    }
    assert_eq!(p.count("t/g/1/b"), (3, 0));
    // The machine short of memory: idle instances go, a few at a time.
    assert_eq!(p.relieve(2).len(), 2);
    assert_eq!(p.live(), 1);
}

#[test]
fn a_cycling_configuration_grows_past_one_per_core_only_while_the_cpu_has_time() {
    let mut p = with_room(Room {
        max_instances: 100,
        memory_mb: 1 << 20,
        max_starting: 2,
    });
    let key = "t/f/1/a";
    // Two instances, cycling (one just came free), and more calls waiting.
    p.by_key.entry(key.into()).or_default().busy = 2;
    p.by_key.get_mut(key).expect("pool").last_release = Some(Instant::now());
    let _w: Vec<_> = (0..4).map(|_| p.take(key, &f("1"))).collect();
    p.cpu_time(50, 100);
    p.cpu_time(145, 200);
    assert!(!p.start_slot(key), "95 % busy: the two cycle, no third");
    p.cpu_time(195, 300);
    // Calls of 100 ms: the four waiting would wait 200 ms for the two.
    p.by_key.get_mut(key).expect("pool").service_us = 100_000.0;
    assert!(p.start_slot(key), "50 % busy, slow calls: it grows");
}

#[tokio::test]
async fn short_calls_drain_a_queue_sooner_than_a_start_and_the_pool_stays_small() {
    let mut p = with_room(Room {
        max_instances: 100,
        memory_mb: 1 << 20,
        max_starting: 2,
    });
    let key = "t/f/1/a";
    let mut waiting: Vec<_> = (0..2).map(|_| p.take(key, &f("1"))).collect();
    // Two instances up, each start measured at 40 ms; both now busy.
    for _ in 0..2 {
        assert!(p.start_slot(key));
    }
    for _ in 0..2 {
        p.started(
            key,
            Some(Granted {
                inst: crate::instance::test_instance(),
                cold: true,
                init_ms: 40,
            }),
        );
    }
    // Calls hold an instance 200 µs, and finish (the pool is cycling).
    let held: Vec<_> = waiting
        .drain(..)
        .map(|t| match t {
            Take::Wait { mut rx, .. } => rx.try_recv().expect("granted").expect("ok"),
            _ => panic!("waited"),
        })
        .collect();
    for g in held {
        p.finish(key, g, 200);
    }
    for _ in 0..2 {
        let Take::Hit(_) = p.take(key, &f("1")) else {
            panic!("idle instances")
        };
    }
    // A burst: 14 more calls wait for the two busy instances, on an idle CPU.
    let _burst: Vec<_> = (0..14).map(|_| p.take(key, &f("1"))).collect();
    p.cpu_time(10, 100);
    p.cpu_time(20, 200);
    assert!(
        !p.start_slot(key),
        "14 calls of 200 µs drain from two instances in 1.4 ms: no start"
    );
    assert_eq!(p.live(), 2);
    // Calls that hold an instance 50 ms: the queue would take 350 ms.
    p.by_key.get_mut(key).expect("pool").service_us = 50_000.0;
    assert!(p.start_slot(key));
}
