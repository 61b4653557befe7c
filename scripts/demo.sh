#!/usr/bin/env bash
# The main job: a demo cluster volume on image files.
#
# Builds the tools, makes a two-slot cluster volume on sparse 64 GiB image
# files, prints and checks it, mounts it three times (quorum slots 0 and 1,
# and a client without a slot, each its own scoutfsd) and runs the seed's
# quick start: `touch one; sync; scoutfs walk-inodes meta_seq 0 -1 MNT`
# shows each changed inode at its new meta_seq, and data_seq after a
# write; every mount shows the same files and the same walk; then stat,
# statfs, df, ino-path, get-fiemap and counters, the unmounts (commit and
# farewell), `check` clean, and `check` catching a corrupted block.
#
# Mounting needs root and /dev/fuse. With /sbin writable the demo installs
# the helpers /sbin/mount.scoutfs and /sbin/umount.fuse.scoutfs (symlinks to
# scoutfsd, removed again at exit) and uses `mount -t scoutfs`; otherwise it
# runs scoutfsd directly; without root or /dev/fuse it skips the mount part.
#
#   scripts/demo.sh [WORKDIR]     (default: ./demo-work, removed first)
#   SCOUTFS_DEMO_PROFILE=debug    build and use the debug binaries
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-demo-work}
profile=${SCOUTFS_DEMO_PROFILE:-release}
target=${CARGO_TARGET_DIR:-target}

scripts/setup.sh
if [ "$profile" = release ]; then
  cargo build --release --locked -p scoutfs-cli -p scoutfs-fuse-frontend
else
  cargo build --locked -p scoutfs-cli -p scoutfs-fuse-frontend
fi
bin=$(cd "$target/$profile" && pwd)
scoutfs=$bin/scoutfs
scoutfsd=$bin/scoutfsd

rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)
meta="$work/meta.img"
data="$work/data.img"
mnts=("$work/mnt0" "$work/mnt1" "$work/mnt2")
mkdir -p "${mnts[@]}"
mnt=${mnts[0]}
truncate -s 64G "$meta"
truncate -s 64G "$data"

installed=()
cleanup() {
  for ((i = ${#mnts[@]} - 1; i >= 0; i--)); do
    m=${mnts[$i]}
    if grep -qs " $m " /proc/mounts; then
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    fi
  done
  for h in "${installed[@]}"; do rm -f "$h"; done
}
trap cleanup EXIT

run() { echo "\$ $*"; "$@"; }

echo "== mkfs: two quorum slots on 127.0.0.1"
"$scoutfs" mkfs -Q 0,127.0.0.1,19700 -Q 1,127.0.0.1,19701 "$meta" "$data"

echo "== print (super block)"
"$scoutfs" print "$meta" | sed -n '1,/^quorum blkno/p' | head -n -1

echo "== check"
"$scoutfs" check "$meta" "$data"
echo "check: clean (exit 0)"

can_mount=""
if [ "$(id -u)" != 0 ]; then
  echo "== mount: skipped (not root: mounting needs CAP_SYS_ADMIN)"
elif ! [ -c /dev/fuse ] || ! : 2>/dev/null </dev/fuse; then
  echo "== mount: skipped (no usable /dev/fuse)"
else
  can_mount=yes
fi

if [ -n "$can_mount" ]; then
  how=scoutfsd
  helpers_ok=yes
  for h in /sbin/mount.scoutfs /sbin/umount.fuse.scoutfs /sbin/mount.fuse.scoutfs; do
    if [ -e "$h" ] || [ -L "$h" ]; then
      [ "$(readlink "$h")" = "$scoutfsd" ] || helpers_ok=""
    fi
  done
  if [ -n "$helpers_ok" ] && [ -w /sbin/ ]; then
    for h in /sbin/mount.scoutfs /sbin/umount.fuse.scoutfs /sbin/mount.fuse.scoutfs; do
      if ! [ -L "$h" ]; then
        ln -s "$scoutfsd" "$h"
        installed+=("$h")
      fi
    done
    how=helpers
  fi

  # Slots 0 and 1 are quorum members (the first one up is elected and
  # serves); the third mount has no slot and joins as a client.
  slot_opts=(",quorum_slot_nr=0" ",quorum_slot_nr=1" "")
  if [ "$how" = helpers ]; then
    echo "== mount three times (helpers /sbin/mount.scoutfs, /sbin/umount.fuse.scoutfs -> scoutfsd)"
    for i in 0 1 2; do
      run mount -t scoutfs -o "metadev_path=$meta${slot_opts[$i]}" "$data" "${mnts[$i]}"
    done
  else
    echo "== mount three times (scoutfsd directly: /sbin helpers not installable)"
    for i in 0 1 2; do
      o=${slot_opts[$i]#,}
      run "$scoutfsd" --metadev "$meta" --datadev "$data" --mountpoint "${mnts[$i]}" ${o:+-o "$o"}
    done
  fi
  grep " $work/mnt" /proc/mounts

  echo "== the quick start: every change shows up at its new meta_seq"
  run touch "$mnt/one"
  run sync
  run "$scoutfs" walk-inodes meta_seq 0 -1 "$mnt"
  run touch "$mnt/two"
  run sync
  run "$scoutfs" walk-inodes meta_seq 0 -1 "$mnt"
  run touch "$mnt/one"
  run sync
  run "$scoutfs" walk-inodes meta_seq 0 -1 "$mnt"

  echo "== data_seq: only content changes, never directories"
  echo "hello, scoutfs" > "$mnt/one"
  echo "\$ echo 'hello, scoutfs' > $mnt/one"
  run sync
  run "$scoutfs" walk-inodes data_seq 0 -1 "$mnt"

  echo "== the other mounts see the same files and the same index"
  run ls -li "${mnts[1]}" "${mnts[2]}"
  run cat "${mnts[2]}/one"
  for m in "${mnts[1]}" "${mnts[2]}"; do
    run "$scoutfs" walk-inodes meta_seq 0 -1 "$m"
  done
  echo "\$ echo 'written on mount 2' >> ${mnts[2]}/one; cat $mnt/one"
  echo "written on mount 2" >> "${mnts[2]}/one"
  cat "$mnt/one"

  echo "== what the utility shows of a file and of the volume"
  mkdir "$mnt/dir"
  ln "$mnt/one" "$mnt/dir/also-one"
  echo "\$ mkdir $mnt/dir; ln $mnt/one $mnt/dir/also-one"
  run "$scoutfs" stat "$mnt/one"
  run "$scoutfs" ino-path "$(stat -c %i "$mnt/one")" -p "$mnt"
  run "$scoutfs" get-referring-entries "$(stat -c %i "$mnt/one")" -p "$mnt"
  run "$scoutfs" get-fiemap "$mnt/one"
  run "$scoutfs" statfs -p "$mnt"
  run "$scoutfs" df -h -p "$mnt"
  run "$scoutfs" sync -p "$mnt"
  sleep 1.2
  echo "\$ $scoutfs counters $mnt | grep trans_commit"
  "$scoutfs" counters "$mnt" | grep trans_commit

  echo "== unmount: commit, farewell, then umount returns (client first, server last)"
  run umount "${mnts[2]}"
  run umount "${mnts[1]}"
  if [ "$how" = helpers ]; then
    run umount "$mnt"
  else
    run umount "$mnt"
    # A plain umount ends the FUSE connection; the daemon commits and says
    # farewell before it lets go of the images.
    for _ in $(seq 100); do
      flock -n "$meta" true 2>/dev/null && break
      sleep 0.1
    done
  fi
  echo "== check after unmounting"
  "$scoutfs" check "$meta" "$data"
  echo "check: clean (exit 0)"
fi

echo "== flip one byte of the fs_root block and check again"
fs_root=$("$scoutfs" print "$meta" | awk '/^  fs_root:/ {print $3; exit}')
printf '\x5a' | dd of="$meta" bs=1 seek=$((fs_root * 65536 + 1000)) conv=notrunc status=none
set +e
"$scoutfs" check "$meta" "$data"
rc=$?
set -e
echo "check exit code: $rc (1 = faults found)"
[ "$rc" = 1 ]
echo "== demo done; images in $work"
