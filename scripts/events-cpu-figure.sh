#!/usr/bin/env bash
# Where the CPU time of 100 event subscribers goes (docs/performance.md, "Event stream"): runs
# `helios-cli bench events` against a fresh local cluster of three release servers and no agent,
# and reads the CPU time (user + system, from /proc) of the servers, of the leader alone, and of
# the bench process (the submitters, and the subscribers' receiving end) over each of its three
# runs: no subscriber, with subscribers (100 unless `--subscribers N`), none again. Extra
# arguments go to `bench events` (`--subscribers N`, `--decode-payloads`). Leaves the cluster
# stopped.
#
#   cargo build --release --workspace && scripts/events-cpu-figure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/local-cluster.sh clean >/dev/null 2>&1 || true
AGENTS=0 HELIOS_BIN=target/release scripts/local-cluster.sh start >/dev/null
trap 'scripts/local-cluster.sh stop >/dev/null 2>&1 || true' EXIT
servers="$(cat .helios-local/server-*.pid)"
ticks="$(getconf CLK_TCK)"
leader_id="$(target/release/helios-cli server members | awk '$3 == "leader" { print $1 }')"
leader="$(cat ".helios-local/server-$leader_id.pid")"
log="$(mktemp)"

# Seconds of CPU the given processes have used, summed.
cpu() {
    local total=0 t
    for pid in "$@"; do
        t="$(awk '{ print $14 + $15 }' "/proc/$pid/stat")"
        total=$((total + t))
    done
    echo "$total"
}
seconds() { awk -v t="$1" -v hz="$ticks" 'BEGIN { printf "%.2f", t / hz }'; }

target/release/helios-cli bench events --jobs 20000 --probes 20 "$@" >"$log" 2>&1 &
bench=$!
s0="$(cpu $servers)" l0="$(cpu "$leader")" b0="$(cpu "$bench")"
echo "| run | servers' CPU | the leader's | the bench's |"
echo "|---|---:|---:|---:|"
# Each run's line is printed as it ends (the second's once every subscriber has every event).
for run in "no subscriber:" "event latency" "no subscriber again"; do
    until grep -q "^$run" "$log"; do
        kill -0 "$bench" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.05
    done
    s="$(cpu $servers)" l="$(cpu "$leader")" b="$(cpu "$bench")"
    label="${run%:}"
    [ "$run" = "event latency" ] && label="with subscribers"
    echo "| $label | $(seconds $((s - s0))) s | $(seconds $((l - l0))) s | $(seconds $((b - b0))) s |"
    s0=$s l0=$l b0=$b
done
wait "$bench"
# The leader's column is only its own if the leader stayed the same throughout.
now_leader="$(target/release/helios-cli server members | awk '$3 == "leader" { print $1 }')"
if [ "$now_leader" != "$leader_id" ]; then
    echo "the leader changed during the runs (server $leader_id, then $now_leader): its column is not one server's" >&2
    exit 1
fi
grep -E "jobs/s|mean|latency|wake-up" "$log"
rm -f "$log"
