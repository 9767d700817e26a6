#!/usr/bin/env bash
# Servers' memory through a burst of placements and a collection (docs/performance.md, "Leader
# memory after 100,000 placements"): starts a servers-only local cluster in a temporary
# directory, runs `bench place`, waits for its simulated nodes to go down, forces `system gc`,
# and prints each server's RSS at every step, then again after a restart on the collected data.
# Needs release binaries (cargo build --release).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release"
state="$(mktemp -d /tmp/helios-memory.XXXXXX)"
export HELIOS_LOCAL_DIR="$state" HELIOS_BIN="$bin" AGENTS=0
export HELIOS_ADDR=127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053
trap '"$root/scripts/local-cluster.sh" stop >/dev/null 2>&1; rm -rf "$state"' EXIT

rss() {
    printf '%-22s' "$1:"
    ps -o rss=,args= -C helios-server |
        awk '{ split($0, a, "--node-id "); split(a[2], b, " "); printf " server %s %d MiB", b[1], $1 / 1024 }'
    echo
}

"$root/scripts/local-cluster.sh" start >/dev/null
rss started
"$bin/helios-cli" bench place "$@" | tail -1
rss placed
sleep 25 # the simulated nodes miss their heartbeats and go down
rss "nodes down"
"$bin/helios-cli" system gc
sleep 5
rss "5 s after gc"
sleep 30
rss "35 s after gc"
"$root/scripts/local-cluster.sh" stop >/dev/null
sleep 3
"$root/scripts/local-cluster.sh" start >/dev/null
sleep 5
rss restarted
