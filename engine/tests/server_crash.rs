//! Crash consistency of the server's commit path (§3.2, §5.4): two mounts
//! run random requests (transactions, inode allocation, statfs, farewell and
//! return) against a server on `FaultDevice`s; at a random point the devices
//! start failing every op (a power cut at op N), then crash with unflushed
//! writes lost (`LoseUnflushed`) or lost, kept or torn at random (`Random`).
//! The image left behind must pass the offline check, the server must reopen
//! at the last committed super or the one being written (never older than
//! any acknowledged request), and the volume must keep working: mounts
//! resend greetings and GET_LOG_TREES (replay) and commit more transactions.

mod server_support;

use drivers::CrashMode;
use engine::runtime::{Runtime, Sim};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server_support::*;

const META: u64 = 8 * GIB;
const DATA: u64 = 16 * GIB;

/// One request of one mount; returns whether the server acknowledged it.
/// Exactly one request per step, so every commit the server acknowledged
/// is counted: a step of two requests could commit the first, then land
/// the second's super without acknowledging it (two supers past the ack).
async fn step(rng: &mut SmallRng, c: &mut Client, gone: &mut bool) -> Result<(), i32> {
    if *gone {
        c.greet().await?;
        *gone = false;
        return Ok(());
    }
    match rng.gen_range(0..10) {
        0 => c.alloc_inodes(rng.gen_range(1..5000)).await.map(|_| ()),
        1 => c.statfs().await.map(|_| ()),
        2 => {
            c.farewell().await?;
            *gone = true;
            Ok(())
        }
        3 => c.last_seq().await.map(|_| ()),
        _ if c.lt.is_none() => c.get_log_trees().await.map(|_| ()),
        _ => {
            let (p, d) = (rng.gen_range(0..60), rng.gen_range(0..30));
            let lt = c.build(p, d).await?;
            c.commit(&lt).await
        }
    }
}

async fn crash_run(rt: Runtime, seed: u64, mode: CrashMode) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (meta, data) = mkfs(META, DATA, seed);
    meta.set_completion_delay(seed, 2);
    let s = open(&meta, &data, &rt).await;
    let mut clients = vec![
        Client::new(&s, &meta, &rt, 0x100),
        Client::new(&s, &meta, &rt, 0x200),
    ];
    let mut gone = vec![false; clients.len()];
    for c in &clients {
        c.greet().await.unwrap();
    }
    let steps = rng.gen_range(1..16);
    let cut_at = rng.gen_range(0..steps);
    let mut acked_hdr_seq = s.stable_super().hdr.seq.get();
    let mut acked_next_ino = s.stable_super().next_ino.get();
    // Run until the cut has failed a request (or a bounded number of steps
    // after it): the power goes at op N of whatever runs then.
    for i in 0..steps + 40 {
        if i == cut_at {
            let n = rng.gen_range(0..60);
            meta.fail_after(meta.ops_issued() + n);
            data.fail_after(data.ops_issued() + n / 8);
        }
        let ci = rng.gen_range(0..clients.len());
        let res = step(&mut rng, &mut clients[ci], &mut gone[ci]).await;
        if i < cut_at {
            res.unwrap_or_else(|e| panic!("seed {seed}: step {i} failed before the cut: {e}"));
        }
        match res {
            Ok(()) => {
                acked_hdr_seq = acked_hdr_seq.max(s.stable_super().hdr.seq.get());
                acked_next_ino = acked_next_ino.max(s.stable_super().next_ino.get());
            }
            Err(_) => break,
        }
    }
    drop(clients);
    drop(s);
    let (meta, data) = (meta.crash(seed, mode), data.crash(seed ^ 1, mode));
    let faults = check(&meta, &data);
    assert!(
        faults.is_empty(),
        "seed {seed} {mode:?}: after the crash: {faults:#?}"
    );

    let s = open(&meta, &data, &rt).await;
    let sb = s.stable_super();
    assert!(
        sb.hdr.seq.get() == acked_hdr_seq || sb.hdr.seq.get() == acked_hdr_seq + 1,
        "seed {seed}: reopened at super seq {} but {} was acknowledged",
        sb.hdr.seq.get(),
        acked_hdr_seq
    );
    if std::env::var_os("SERVER_CRASH_VERBOSE").is_some() {
        eprintln!(
            "seed {seed}: cut at step {cut_at}/{steps}, super seq {} (acked {acked_hdr_seq})",
            sb.hdr.seq.get()
        );
    }
    assert!(
        sb.next_ino.get() >= acked_next_ino,
        "seed {seed}: inode numbers went back"
    );
    let mut clients = [
        Client::new(&s, &meta, &rt, 0x100),
        Client::new(&s, &meta, &rt, 0x200),
    ];
    for c in clients.iter_mut() {
        c.greet().await.unwrap();
        c.cycle(20, 5).await.unwrap();
        c.cycle(5, 20).await.unwrap();
    }
    let faults = check(&meta, &data);
    assert!(
        faults.is_empty(),
        "seed {seed} {mode:?}: after reopening: {faults:#?}"
    );
}

#[test]
fn server_crash_at_random_points_reopens_clean_simulation() {
    let seeds: u64 = std::env::var("SERVER_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    for seed in 0..seeds {
        let mode = if seed % 2 == 0 {
            CrashMode::LoseUnflushed
        } else {
            CrashMode::Random
        };
        let sim = Sim::new(seed);
        sim.block_on(crash_run(sim.runtime(), seed, mode));
    }
}

#[test]
fn server_crash_at_random_points_reopens_clean_executor() {
    for seed in 1000..1004 {
        let mode = if seed % 2 == 0 {
            CrashMode::LoseUnflushed
        } else {
            CrashMode::Random
        };
        for (_, ()) in engine::runtime::for_each_runtime(seed, |rt| crash_run(rt, seed, mode)) {}
    }
}
