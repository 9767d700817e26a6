#!/usr/bin/env bash
# What --metrics-addr costs on submissions (docs/performance.md, "Metrics, request ids and
# request spans"): a fresh three-server release cluster without agents, on 127.0.0.1:50051-3,
# runs `bench submit`, without and with metrics, alternately.
#
#   scripts/bench-metrics.sh                      # 256 in flight, 50,000 jobs, two pairs
#   BENCH="--concurrency 1 --jobs 1000" scripts/bench-metrics.sh
#   SRV=target/debug scripts/bench-metrics.sh     # servers of another build
#   MODES="without without" SRV=DIR scripts/bench-metrics.sh   # a build without --metrics-addr
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release"
srv="${SRV:-$bin}"
work="$(mktemp -d)"
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop; rm -rf "$work"' EXIT

run() {
    local mode=$1
    rm -rf "${work:?}"/*
    for id in 1 2 3; do
        mkdir -p "$work/s$id"
        local extra=()
        [ "$id" = 1 ] && extra=(--bootstrap)
        [ "$mode" = with ] && extra+=(--metrics-addr "127.0.0.1:910$id")
        (cd "$work/s$id" && exec "$srv/helios-server" --node-id "$id" --rpc-addr "127.0.0.1:5005$id" \
            --peer 1=127.0.0.1:50051 --peer 2=127.0.0.1:50052 --peer 3=127.0.0.1:50053 "${extra[@]}" \
            </dev/null >log 2>&1) &
        pids+=($!)
    done
    for _ in $(seq 100); do "$bin/helios-cli" server members >/dev/null 2>&1 && break; sleep 0.2; done
    echo "== $mode metrics"
    # shellcheck disable=SC2086 # BENCH is a list of flags
    "$bin/helios-cli" bench submit ${BENCH:---concurrency 256 --jobs 50000} | tail -1
    if [ "$mode" = with ]; then
        for port in 9101 9102 9103; do
            curl -s "127.0.0.1:$port/metrics" | grep -E '^helios_raft_log_fsync_seconds_(sum|count)' | tr '\n' ' ' || true
            echo
        done
    fi
    stop
}

# shellcheck disable=SC2086 # MODES is a list of words
for mode in ${MODES:-without with without with}; do run "$mode"; done
