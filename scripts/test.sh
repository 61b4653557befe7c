#!/usr/bin/env bash
# The project's test command (README, .ci/run). Installs what it needs, then
# runs formatting, lints and the test suites.
#
#   scripts/test.sh            default suite (CI): well under 45 minutes on 2 cores
#   scripts/test.sh --long     also the long runs: more property-test operations,
#                              lock/totl/simulation seeds, 100 kill -9 rounds,
#                              20 leader kills under a 3-mount load, a 10-minute
#                              torture run, 1,000,000 creates over 3 mounts,
#                              100,000 .srch. files, more hostile-input rounds,
#                              and cargo-fuzz if present
set -euo pipefail
cd "$(dirname "$0")/.."

long=0
for arg in "$@"; do
  case "$arg" in
    --long) long=1 ;;
    *) echo "usage: $0 [--long]" >&2; exit 64 ;;
  esac
done

scripts/setup.sh

export CARGO_TERM_COLOR=never
if [ "$long" = 1 ]; then
  export SCOUTFS_PROPTEST_OPS=${SCOUTFS_PROPTEST_OPS:-2000000}
  export SCOUTFS_FUZZ_ROUNDS=${SCOUTFS_FUZZ_ROUNDS:-200000}
  export SCOUTFS_CRASH_SEEDS=${SCOUTFS_CRASH_SEEDS:-10000}
  export SCOUTFS_CRASH_CUTS=${SCOUTFS_CRASH_CUTS:-5}
  export SCOUTFS_SIM_SEEDS=${SCOUTFS_SIM_SEEDS:-10000}
  export SCOUTFS_LOCK_SEEDS=${SCOUTFS_LOCK_SEEDS:-10000}
  export SCOUTFS_KERNEL_SIM_SEEDS=${SCOUTFS_KERNEL_SIM_SEEDS:-10000}
  export SCOUTFS_FENCE_SEEDS=${SCOUTFS_FENCE_SEEDS:-20000}
  export SCOUTFS_TOTL_SEEDS=${SCOUTFS_TOTL_SEEDS:-400}
  export SCOUTFS_KILL_ROUNDS=${SCOUTFS_KILL_ROUNDS:-100}
  export SCOUTFS_FSX_OPS=${SCOUTFS_FSX_OPS:-100000}
  export SCOUTFS_FIO_SIZE=${SCOUTFS_FIO_SIZE:-1024}
  export SCOUTFS_CLUSTER_STEPS=${SCOUTFS_CLUSTER_STEPS:-3000}
  export SCOUTFS_SRCH_FILES=${SCOUTFS_SRCH_FILES:-100000}
  export SCOUTFS_FAILOVER_KILLS=${SCOUTFS_FAILOVER_KILLS:-20}
  export SCOUTFS_TORTURE_SECS=${SCOUTFS_TORTURE_SECS:-600}
  export SCOUTFS_CLUSTER_CREATES=${SCOUTFS_CLUSTER_CREATES:-1000000}
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked

if [ "$long" = 1 ] && command -v cargo-fuzz >/dev/null; then
  echo "== cargo fuzz (60 s a target)"
  for t in btree_block fixed_structs list_bloom_srch_blocks net_messages; do
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$t" -- -max_total_time=60)
  done
fi
echo "== all tests passed"
