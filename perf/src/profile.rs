//! The sizes a run uses: the `--quick` profile (CI's smoke test of the
//! harness, under 3 minutes) and the full profile, each overridable from
//! the command line.
//!
//! Guarantees: every size is at least 1 and thread and mount counts are
//! at least 1 (or 2 where a test needs two). Touches nothing else.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub name: String,
    pub threads: usize,
    pub mounts: usize,
    pub meta_files: u64,
    pub data_file_bytes: u64,
    pub rand_ops: u64,
    pub fsync_ops: u64,
    pub index_files: u64,
    pub index_changed: u64,
    pub cluster_files: u64,
    pub pingpong_rounds: u64,
    pub driver_file_bytes: u64,
    pub driver_secs: f64,
    pub crosscheck_bytes: u64,
    pub crosscheck_files: u64,
    pub repeats: usize,
    pub loop_image_bytes: u64,
    pub scoutfs_meta_bytes: u64,
    pub scoutfs_data_bytes: u64,
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

impl Profile {
    pub fn quick() -> Profile {
        Profile {
            name: "quick".into(),
            threads: 2,
            mounts: 3,
            meta_files: 1000,
            data_file_bytes: 32 * MIB,
            rand_ops: 500,
            fsync_ops: 50,
            index_files: 2000,
            index_changed: 100,
            cluster_files: 200,
            pingpong_rounds: 50,
            driver_file_bytes: 128 * MIB,
            driver_secs: 1.0,
            crosscheck_bytes: 32 * MIB,
            crosscheck_files: 1000,
            repeats: 1,
            loop_image_bytes: 4 * GIB,
            scoutfs_meta_bytes: 8 * GIB,
            scoutfs_data_bytes: 16 * GIB,
        }
    }

    pub fn full() -> Profile {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Profile {
            name: "full".into(),
            threads: cores.clamp(2, 8),
            mounts: 3,
            meta_files: 100_000,
            data_file_bytes: 1024 * MIB,
            rand_ops: 20_000,
            fsync_ops: 1000,
            index_files: 100_000,
            index_changed: 1000,
            cluster_files: 5000,
            pingpong_rounds: 500,
            driver_file_bytes: 2 * GIB,
            driver_secs: 10.0,
            crosscheck_bytes: 1024 * MIB,
            crosscheck_files: 20_000,
            repeats: 3,
            loop_image_bytes: 16 * GIB,
            scoutfs_meta_bytes: 16 * GIB,
            scoutfs_data_bytes: 32 * GIB,
        }
    }
}
