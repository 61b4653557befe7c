//! The deterministic simulation: virtual time, replay by seed, deadlock
//! detection.

// Named so that `cargo test runtime` selects these tests.
mod runtime_sim {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use engine::runtime::{Runtime, Sim, SimError};

    /// Several tasks that yield, sleep and draw random numbers, logging each
    /// step: the log is the interleaving.
    async fn interleaving_trace(rt: Runtime) -> Vec<(u32, u32, u64)> {
        let trace = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for task in 0..5u32 {
            let rt2 = rt.clone();
            let trace = Arc::clone(&trace);
            handles.push(rt.spawn(async move {
                for step in 0..6u32 {
                    let draw = rt2.random_u64() % 1000;
                    trace.lock().unwrap().push((task, step, draw));
                    match draw % 3 {
                        0 => rt2.sleep(Duration::from_millis(draw % 7)).await,
                        _ => rt2.yield_now().await,
                    }
                }
            }));
        }
        for handle in handles {
            handle.await;
        }
        let trace = trace.lock().unwrap().clone();
        trace
    }

    fn trace_for(seed: u64) -> (Vec<(u32, u32, u64)>, Duration, u64) {
        let sim = Sim::new(seed);
        let trace = sim.block_on(interleaving_trace(sim.runtime()));
        (trace, sim.now(), sim.polls())
    }

    #[test]
    fn same_seed_replays_the_same_interleaving() {
        for seed in [0u64, 1, 42, 0xdead_beef] {
            let first = trace_for(seed);
            let second = trace_for(seed);
            assert_eq!(first, second, "seed {seed} did not replay");
            assert_eq!(first.0.len(), 30);
        }
    }

    #[test]
    fn different_seeds_give_different_interleavings() {
        let orders: Vec<Vec<(u32, u32)>> = (0..8u64)
            .map(|seed| trace_for(seed).0.iter().map(|e| (e.0, e.1)).collect())
            .collect();
        let mut distinct = orders.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 1,
            "8 seeds all produced the same task order: {:?}",
            orders[0]
        );
    }

    #[test]
    fn an_hour_of_virtual_sleep_is_instant() {
        let sim = Sim::new(9);
        let rt = sim.runtime();
        sim.block_on(async move {
            assert_eq!(rt.now(), Duration::ZERO);
            rt.sleep(Duration::from_secs(3600)).await;
            assert_eq!(rt.now(), Duration::from_secs(3600));
            rt.sleep(Duration::from_secs(24 * 3600)).await;
            assert_eq!(rt.now(), Duration::from_secs(25 * 3600));
        });
        assert_eq!(sim.now(), Duration::from_secs(25 * 3600));
    }

    /// A future that never completes and never registers its waker anywhere.
    struct Never;

    impl Future for Never {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    #[test]
    fn deadlock_is_reported_with_the_seed() {
        let sim = Sim::new(77);
        sim.set_foreign_wake_grace(Duration::from_millis(1));
        let rt = sim.runtime();
        let result = sim.try_block_on(async move {
            let rt2 = rt.clone();
            let stuck = rt.spawn(async move {
                rt2.sleep(Duration::from_secs(5)).await;
                Never.await;
            });
            stuck.await;
        });
        match result {
            Err(SimError::Deadlock { seed, now, tasks }) => {
                assert_eq!(seed, 77);
                assert_eq!(now, Duration::from_secs(5), "time ran up to the last timer");
                assert_eq!(tasks, 1);
            }
            other => panic!("expected a deadlock, got {other:?}"),
        }
    }

    #[test]
    #[should_panic(expected = "seed 1234")]
    fn block_on_panics_with_the_seed_on_deadlock() {
        let sim = Sim::new(1234);
        sim.set_foreign_wake_grace(Duration::from_millis(1));
        sim.block_on(Never);
    }

    #[test]
    fn time_limit_stops_a_simulation_kept_alive_by_a_periodic_timer() {
        let sim = Sim::new(5);
        sim.set_time_limit(Some(Duration::from_secs(60)));
        let rt = sim.runtime();
        let result = sim.try_block_on(async move {
            let rt2 = rt.clone();
            rt.spawn(async move {
                loop {
                    rt2.sleep(Duration::from_secs(1)).await;
                }
            })
            .detach();
            Never.await;
        });
        assert_eq!(
            result.err(),
            Some(SimError::TimeLimit {
                seed: 5,
                limit: Duration::from_secs(60)
            })
        );
        assert_eq!(sim.now(), Duration::from_secs(60));
    }

    #[test]
    fn spawn_blocking_runs_on_the_simulation_thread() {
        let sim = Sim::new(11);
        let rt = sim.runtime();
        let here = std::thread::current().id();
        let there =
            sim.block_on(async move { rt.spawn_blocking(|| std::thread::current().id()).await });
        assert_eq!(here, there);
    }

    /// Shared between the simulation and a foreign thread.
    #[derive(Default)]
    struct Flag {
        set: bool,
        waker: Option<Waker>,
    }

    #[test]
    fn a_wake_from_another_thread_is_still_delivered() {
        let sim = Sim::new(13);
        sim.set_foreign_wake_grace(Duration::from_secs(30));
        let flag = Arc::new(Mutex::new(Flag::default()));
        let flag2 = Arc::clone(&flag);
        let (registered_tx, registered_rx) = std::sync::mpsc::channel::<()>();
        // The test plays the part of a foreign thread on purpose.
        #[allow(clippy::disallowed_methods)]
        let thread = std::thread::spawn(move || {
            registered_rx.recv().unwrap();
            let mut flag = flag2.lock().unwrap();
            flag.set = true;
            if let Some(waker) = flag.waker.take() {
                waker.wake();
            }
        });
        let mut registered = Some(registered_tx);
        sim.block_on(std::future::poll_fn(move |cx| {
            let mut state = flag.lock().unwrap();
            if state.set {
                return Poll::Ready(());
            }
            state.waker = Some(cx.waker().clone());
            if let Some(tx) = registered.take() {
                tx.send(()).unwrap();
            }
            Poll::Pending
        }));
        thread.join().unwrap();
        assert_eq!(sim.foreign_wakes(), 1);
    }

    #[test]
    fn dropping_the_sim_cancels_its_tasks() {
        struct SetOnDrop(Arc<Mutex<bool>>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = true;
            }
        }
        let dropped = Arc::new(Mutex::new(false));
        let sim = Sim::new(17);
        let rt = sim.runtime();
        let guard = SetOnDrop(Arc::clone(&dropped));
        rt.spawn(async move {
            let _guard = guard;
            Never.await;
        })
        .detach();
        sim.block_on(rt.yield_now());
        assert!(!*dropped.lock().unwrap());
        drop(sim);
        assert!(
            *dropped.lock().unwrap(),
            "the stuck task's future was dropped"
        );
        // Handles may outlive the simulation; using them is harmless.
        assert_eq!(rt.now(), Duration::ZERO);
    }
}
