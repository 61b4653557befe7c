#!/usr/bin/env bash
# Several "hosts" on one machine (TESTING.md §4): network namespaces
# NAME-h1..NAME-hN on a private bridge in a "switch" namespace NAME-sw,
# host i at SUBNET.i/24 on its eth0, its switch port pI.
#
#   scripts/netns-rig.sh up NAME N SUBNET     e.g. up sfs 3 10.213.7
#   scripts/netns-rig.sh down NAME N SUBNET
#   scripts/netns-rig.sh cut NAME I           take host I's switch port down
#   scripts/netns-rig.sh heal NAME I          port up again, neighbours flushed
#   scripts/netns-rig.sh exec NAME I CMD...   CMD in host I's network only
#                                             (nsenter --net: same mounts, so
#                                             a FUSE mount made there is seen
#                                             everywhere; devices are image
#                                             files every host opens directly)
#
# The guard: `up` first adds a blackhole route for SUBNET.0/24 in the root
# namespace, so a process that forgets to enter a namespace cannot send
# the rig's traffic off the machine; it refuses to start when the route or
# a namespace of the name already exists (another rig). `down` removes the
# namespaces and the route, and `up` does so itself when it fails half way.
# Needs root and iproute2 (`ip netns`).
set -euo pipefail

usage() {
  sed -n '2,21p' "$0" >&2
  exit 64
}

[ $# -ge 2 ] || usage
cmd=$1
name=$2
sw="$name-sw"

down() {
  local n=$1 subnet=$2
  for i in $(seq 1 "$n"); do
    ip netns del "$name-h$i" 2>/dev/null || true
  done
  ip netns del "$sw" 2>/dev/null || true
  ip route del blackhole "$subnet.0/24" 2>/dev/null || true
}

case "$cmd" in
  up)
    [ $# -eq 4 ] || usage
    n=$3
    subnet=$4
    if ip route show "$subnet.0/24" | grep -q .; then
      echo "netns-rig: a route for $subnet.0/24 exists already" >&2
      exit 1
    fi
    if ip netns list | grep -qE "^($sw|$name-h[0-9]+)( |$)"; then
      echo "netns-rig: namespaces named $name-* exist already" >&2
      exit 1
    fi
    # The guard first, before any namespace exists.
    ip route add blackhole "$subnet.0/24"
    trap 'down "$n" "$subnet"' ERR
    ip netns add "$sw"
    ip -n "$sw" link add br0 type bridge
    ip -n "$sw" link set br0 up
    ip -n "$sw" link set lo up
    for i in $(seq 1 "$n"); do
      h="$name-h$i"
      ip netns add "$h"
      ip -n "$sw" link add "p$i" type veth peer name eth0 netns "$h"
      ip -n "$sw" link set "p$i" master br0 up
      ip -n "$h" addr add "$subnet.$i/24" dev eth0
      ip -n "$h" link set eth0 up
      ip -n "$h" link set lo up
    done
    trap - ERR
    ;;
  down)
    [ $# -eq 4 ] || usage
    down "$3" "$4"
    ;;
  cut)
    [ $# -eq 3 ] || usage
    ip -n "$sw" link set "p$3" down
    ;;
  heal)
    [ $# -eq 3 ] || usage
    ip -n "$sw" link set "p$3" up
    ip -n "$name-h$3" neigh flush dev eth0
    ;;
  exec)
    [ $# -ge 4 ] || usage
    i=$3
    shift 3
    exec nsenter --net="/run/netns/$name-h$i" -- "$@"
    ;;
  *) usage ;;
esac
