//! Runtime behaviour that must be the same on the production executor and in
//! the simulation: each test body runs once on each (`for_each_runtime`).

// Named so that `cargo test runtime` selects these tests.
mod runtime_both {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use engine::runtime::{for_each_runtime, Elapsed, RuntimeKind};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn timers_fire_in_deadline_order() {
        for_each_runtime(1, |rt| async move {
            let fired = Arc::new(Mutex::new(Vec::new()));
            let start = rt.now();
            // Spawned out of deadline order on purpose.
            let delays_ms = [35u64, 5, 25, 15];
            let mut handles = Vec::new();
            for delay_ms in delays_ms {
                let rt2 = rt.clone();
                let fired = Arc::clone(&fired);
                let deadline = start + Duration::from_millis(delay_ms);
                handles.push(rt.spawn(async move {
                    rt2.sleep_until(deadline).await;
                    assert!(
                        rt2.now() >= deadline,
                        "a sleep completed before its deadline"
                    );
                    fired.lock().unwrap().push(delay_ms);
                }));
            }
            for handle in handles {
                handle.await;
            }
            assert_eq!(*fired.lock().unwrap(), vec![5, 15, 25, 35]);
            assert!(rt.now() >= start + 35 * MS);
        });
    }

    #[test]
    fn sleep_waits_at_least_its_duration() {
        for_each_runtime(2, |rt| async move {
            let before = rt.now();
            rt.sleep(20 * MS).await;
            let slept = rt.now() - before;
            assert!(slept >= 20 * MS, "slept only {slept:?}");
            if rt.kind() == RuntimeKind::Simulation {
                assert_eq!(slept, 20 * MS, "virtual time moves exactly to the deadline");
            }
            // A deadline in the past completes at once.
            rt.sleep_until(Duration::ZERO).await;
            rt.sleep(Duration::ZERO).await;
        });
    }

    #[test]
    fn join_handles_return_values() {
        let outputs = for_each_runtime(3, |rt| async move {
            let a = rt.spawn(async { 40u64 });
            let rt2 = rt.clone();
            let b = rt.spawn(async move {
                // Nested spawn, awaited from inside a task.
                rt2.spawn(async { 2u64 }).await
            });
            a.await + b.await
        });
        for (kind, output) in outputs {
            assert_eq!(output, 42, "{kind:?}");
        }
    }

    #[test]
    fn spawn_blocking_returns_results() {
        for_each_runtime(4, |rt| async move {
            let handles: Vec<_> = (0..8u64)
                .map(|i| rt.spawn_blocking(move || (0..=i * 1000).sum::<u64>()))
                .collect();
            for (i, handle) in handles.into_iter().enumerate() {
                let n = i as u64 * 1000;
                assert_eq!(handle.await, n * (n + 1) / 2);
            }
            let text = rt.spawn_blocking(|| String::from("done")).await;
            assert_eq!(text, "done");
        });
    }

    #[test]
    fn yield_now_lets_other_tasks_run() {
        for_each_runtime(5, |rt| async move {
            let log = Arc::new(Mutex::new(Vec::new()));
            let mut handles = Vec::new();
            for task in 0..3u32 {
                let rt2 = rt.clone();
                let log = Arc::clone(&log);
                handles.push(rt.spawn(async move {
                    for step in 0..4u32 {
                        log.lock().unwrap().push((task, step));
                        rt2.yield_now().await;
                    }
                }));
            }
            for handle in handles {
                handle.await;
            }
            let log = log.lock().unwrap();
            assert_eq!(log.len(), 12);
            for task in 0..3u32 {
                let steps: Vec<u32> = log.iter().filter(|e| e.0 == task).map(|e| e.1).collect();
                assert_eq!(steps, vec![0, 1, 2, 3], "steps of one task stay in order");
            }
        });
    }

    #[test]
    fn timeout_elapses_or_passes_output_through() {
        for_each_runtime(6, |rt| async move {
            let slow = rt.sleep(Duration::from_secs(3600));
            assert_eq!(rt.timeout(10 * MS, slow).await, Err(Elapsed));
            assert_eq!(
                rt.timeout(Duration::from_secs(3600), async { 7 }).await,
                Ok(7)
            );
        });
    }

    #[test]
    fn dropped_handle_cancels_and_detached_task_runs() {
        for_each_runtime(7, |rt| async move {
            let ran = Arc::new(Mutex::new(Vec::new()));

            let ran_cancelled = Arc::clone(&ran);
            let rt2 = rt.clone();
            let cancelled = rt.spawn(async move {
                rt2.sleep(5 * MS).await;
                ran_cancelled.lock().unwrap().push("cancelled");
            });
            drop(cancelled);

            let ran_detached = Arc::clone(&ran);
            let rt2 = rt.clone();
            rt.spawn(async move {
                rt2.sleep(5 * MS).await;
                ran_detached.lock().unwrap().push("detached");
            })
            .detach();

            rt.sleep(30 * MS).await;
            assert_eq!(*ran.lock().unwrap(), vec!["detached"]);
        });
    }

    #[test]
    fn random_numbers_vary() {
        for_each_runtime(8, |rt| async move {
            let draws: Vec<u64> = (0..16).map(|_| rt.random_u64()).collect();
            let mut distinct = draws.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                draws.len(),
                "16 draws of 64 bits collide: {draws:?}"
            );
        });
    }

    #[test]
    fn runtime_handle_is_send_sync_clone() {
        fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
        assert_send_sync_clone::<engine::runtime::Runtime>();
        fn assert_send<T: Send>() {}
        assert_send::<engine::runtime::JoinHandle<u32>>();
        assert_send::<engine::runtime::Sleep>();
    }
}
