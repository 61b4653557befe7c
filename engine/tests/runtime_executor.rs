//! The production executor: real threads, real clock, parking.

// Named so that `cargo test runtime` selects these tests.
mod runtime_executor {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier, Mutex};
    use std::task::{Poll, Waker};
    use std::time::Duration;

    use drivers::Park;
    use engine::runtime::{Executor, ExecutorConfig, ThreadPark};

    #[derive(Default)]
    struct Flag {
        set: bool,
        waker: Option<Waker>,
    }

    #[test]
    fn a_wake_from_another_thread_unparks_the_engine() {
        let executor = Executor::default();
        let flag = Arc::new(Mutex::new(Flag::default()));
        let flag2 = Arc::clone(&flag);
        // The test plays the part of a foreign thread (an I/O completion).
        #[allow(clippy::disallowed_methods)]
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let mut flag = flag2.lock().unwrap();
            flag.set = true;
            if let Some(waker) = flag.waker.take() {
                waker.wake();
            }
        });
        let rt = executor.runtime();
        // Awaited inside a spawned task, so the wake goes through the task queue.
        let task = rt.spawn(std::future::poll_fn(move |cx| {
            let mut state = flag.lock().unwrap();
            if state.set {
                return Poll::Ready(7u32);
            }
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        }));
        assert_eq!(executor.block_on(task), 7);
        thread.join().unwrap();
    }

    #[test]
    fn spawn_from_another_thread_runs_on_the_engine_thread() {
        let executor = Executor::default();
        let rt = executor.runtime();
        let (tx, rx) = futures::channel::oneshot::channel();
        // A foreign thread spawns into the engine while it is parked.
        #[allow(clippy::disallowed_methods)]
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            rt.spawn(async move {
                tx.send(std::thread::current().id()).unwrap();
            })
            .detach();
        });
        let engine_thread = executor.block_on(rx).unwrap();
        assert_eq!(engine_thread, std::thread::current().id());
        thread.join().unwrap();
    }

    #[test]
    fn blocking_calls_run_off_the_engine_thread_and_concurrently() {
        let executor = Executor::default();
        let rt = executor.runtime();
        executor.block_on(async move {
            let engine_thread = std::thread::current().id();
            // Both closures wait for each other: this only finishes if the pool
            // runs them on two threads at once.
            let barrier = Arc::new(Barrier::new(2));
            let b1 = Arc::clone(&barrier);
            let b2 = Arc::clone(&barrier);
            let first = rt.spawn_blocking(move || {
                b1.wait();
                std::thread::current().id()
            });
            let second = rt.spawn_blocking(move || {
                b2.wait();
                std::thread::current().id()
            });
            let (t1, t2) = (first.await, second.await);
            assert_ne!(t1, engine_thread);
            assert_ne!(t2, engine_thread);
            assert_ne!(t1, t2);
        });
    }

    #[test]
    fn a_panic_in_a_blocking_call_reaches_its_awaiter() {
        let executor = Executor::default();
        let rt = executor.runtime();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            executor.block_on(async move {
                rt.spawn_blocking(|| -> u32 { panic!("blocking call failed") })
                    .await
            })
        }));
        assert!(result.is_err());
        // The pool survived the panic.
        let rt = executor.runtime();
        assert_eq!(
            executor.block_on(async move { rt.spawn_blocking(|| 5).await }),
            5
        );
    }

    #[test]
    fn dropping_the_executor_cancels_its_tasks() {
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let executor = Executor::default();
        let rt = executor.runtime();
        let guard = SetOnDrop(Arc::clone(&dropped));
        rt.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        })
        .detach();
        executor.block_on(rt.yield_now());
        assert!(!dropped.load(Ordering::SeqCst));
        drop(executor);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn tasks_left_pending_continue_in_the_next_block_on() {
        let executor = Executor::default();
        let rt = executor.runtime();
        let rt2 = rt.clone();
        let handle = rt.spawn(async move {
            rt2.sleep(Duration::from_millis(5)).await;
            3u32
        });
        executor.block_on(rt.yield_now());
        assert_eq!(executor.block_on(handle), 3);
    }

    #[test]
    fn a_spin_budget_still_parks_and_wakes() {
        let config = ExecutorConfig {
            spin_budget: 100,
            random_seed: Some(1),
            ..ExecutorConfig::default()
        };
        let executor = Executor::with_config(Arc::new(ThreadPark::new()), config);
        let rt = executor.runtime();
        let slept = executor.block_on(async move {
            let before = rt.now();
            rt.sleep(Duration::from_millis(15)).await;
            rt.now() - before
        });
        assert!(slept >= Duration::from_millis(15));
    }

    #[test]
    fn seeded_production_randomness_repeats() {
        let draw = |seed| {
            let config = ExecutorConfig {
                random_seed: Some(seed),
                ..ExecutorConfig::default()
            };
            let executor = Executor::with_config(Arc::new(ThreadPark::new()), config);
            let rt = executor.runtime();
            (rt.random_u64(), rt.random_u64())
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn thread_park_keeps_an_early_unpark_and_times_out() {
        let park = ThreadPark::new();
        park.unpark();
        // Returns at once: the unpark came first.
        park.park(None).unwrap();
        // Nothing pending now: returns after the timeout.
        park.park(Some(Duration::from_millis(5))).unwrap();
        park.park(Some(Duration::ZERO)).unwrap();
    }

    #[test]
    #[should_panic(expected = "already running")]
    fn nested_block_on_is_refused() {
        let executor = Executor::default();
        executor.block_on(async { executor.block_on(async {}) });
    }
}
