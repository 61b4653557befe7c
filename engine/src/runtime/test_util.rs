//! Helpers to write a runtime test once and run it on both runtimes.
//!
//! [`for_each_runtime`] runs a test body under the production executor (with
//! a [`ThreadPark`], a fixed random seed) and then under the simulation with
//! the given seed. Bodies should keep real sleeps short: in production they
//! take real time.
//!
//! Compiled in every build (integration tests under `tests/` need it); it
//! touches only this module's siblings.

use std::future::Future;
use std::sync::Arc;

use super::executor::{Executor, ExecutorConfig, ThreadPark};
use super::sim::Sim;
use super::{Runtime, RuntimeKind};

/// Runs `body` on the production executor, then on a simulation seeded with
/// `seed`, and returns each output with the kind of runtime that made it.
/// The production executor's `random_u64` is seeded with `seed` too.
pub fn for_each_runtime<T, F, Fut>(seed: u64, body: F) -> Vec<(RuntimeKind, T)>
where
    F: Fn(Runtime) -> Fut,
    Fut: Future<Output = T>,
{
    let mut outputs = Vec::with_capacity(2);

    let config = ExecutorConfig {
        random_seed: Some(seed),
        ..ExecutorConfig::default()
    };
    let executor = Executor::with_config(Arc::new(ThreadPark::new()), config);
    let output = executor.block_on(body(executor.runtime()));
    outputs.push((RuntimeKind::Production, output));
    drop(executor);

    let sim = Sim::new(seed);
    let output = sim.block_on(body(sim.runtime()));
    outputs.push((RuntimeKind::Simulation, output));

    outputs
}
