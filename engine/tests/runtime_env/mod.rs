//! Shared by the block, btree and allocator model tests: run a test body on
//! both runtimes (the production executor, then the simulation) with
//! devices, COW seqs and randomness that follow the runtime's seed, and say
//! how to replay a failing seed.

#![allow(dead_code)] // each test file uses its own subset

use std::future::Future;
use std::sync::Arc;

use drivers::FaultDevice;
use engine::block::SeqSource;
use engine::runtime::{for_each_runtime, Runtime, RuntimeKind};
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// Most polls a simulated device op stays pending before it takes effect.
pub const MAX_PENDING_POLLS: u32 = 3;

/// What a test body gets: the runtime it runs on, and devices, COW seqs and
/// randomness that follow that runtime's seed.
#[derive(Clone)]
pub struct Env {
    pub rt: Runtime,
}

impl Env {
    pub fn is_sim(&self) -> bool {
        self.rt.kind() == RuntimeKind::Simulation
    }

    /// A zeroed in-memory device; in the simulation each op stays pending a
    /// seeded-random number of polls.
    pub fn device(&self, size_bytes: u64) -> FaultDevice {
        let dev = FaultDevice::new(size_bytes);
        if self.is_sim() {
            dev.set_completion_delay(self.rt.random_u64(), MAX_PENDING_POLLS);
        }
        dev
    }

    /// COW seqs from the runtime's randomness, as the engine draws them.
    pub fn seqs(&self) -> SeqSource {
        let rt = self.rt.clone();
        Arc::new(move || rt.random_u64())
    }

    pub fn rng(&self) -> SmallRng {
        SmallRng::seed_from_u64(self.rt.random_u64())
    }
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn base_seed() -> u64 {
    env_u64("SCOUTFS_PROPTEST_SEED", 0x5eed)
}

/// Says how to replay a run that panics while it is alive.
struct ReplayNote {
    test: &'static str,
    seed: u64,
    kind: RuntimeKind,
}

impl Drop for ReplayNote {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed on the {:?} runtime, seed {}: replay with SCOUTFS_PROPTEST_SEED={}",
                self.test,
                self.kind,
                self.seed,
                base_seed()
            );
        }
    }
}

/// Runs `body` on the production executor and then on the simulation, both
/// seeded with `base_seed() + salt`.
pub fn on_both_runtimes<T, F, Fut>(test: &'static str, salt: u64, body: F) -> Vec<T>
where
    F: Fn(Env) -> Fut,
    Fut: Future<Output = T>,
{
    let seed = base_seed().wrapping_add(salt);
    let outputs = for_each_runtime(seed, |rt| {
        let note = ReplayNote {
            test,
            seed,
            kind: rt.kind(),
        };
        let run = body(Env { rt });
        async move {
            let out = run.await;
            drop(note);
            out
        }
    });
    outputs.into_iter().map(|(_, out)| out).collect()
}
