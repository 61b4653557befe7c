#!/usr/bin/env bash
# Installs the system packages the demo and the tests use, when missing.
# Safe to run repeatedly; needs root (or sudo) only when something is missing.
set -euo pipefail

need=()
command -v zstd >/dev/null || need+=(zstd)
command -v losetup >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
# POSIX ACLs through a mount (fuse-frontend/tests/acl.rs).
command -v setfacl >/dev/null || need+=(acl)

# The cluster torture run (fuse-frontend/tests/cluster_failover.rs,
# TESTING.md §9) and the netns rig (scripts/netns-rig.sh: ip, nsenter).
command -v stress-ng >/dev/null || need+=(stress-ng)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo is required (rustup)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt

# FUSE frontend tests (fuse-frontend/tests): fuse3 (fusermount3, fuse.conf)
# and pjdfstest (TESTING.md §1; ~70 s to build, kept in ~/.cargo/bin).
if ! command -v fusermount3 >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q fuse3
fi
if ! command -v pjdfstest >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest" ]; then
  cargo install --locked pjdfstest@0.2.2
fi

# Data integrity tests through a mount (fuse-frontend/tests/fio.rs, fsx.rs;
# TESTING.md §2): fio from Debian, fsx-rs (~60 s to build, kept in
# ~/.cargo/bin).
if ! command -v fio >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q fio
fi
if ! command -v fsx >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/fsx" ]; then
  cargo install --locked fsx@0.3.2
fi

# The perf harness's baselines (perf/, docs/performance.md): xfs on a loop
# device and bindfs, a FUSE passthrough. scoutfs-perf installs them itself
# too; here so CI's smoke run finds them.
need=()
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v bindfs >/dev/null || need+=(bindfs)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need[@]}"
fi
