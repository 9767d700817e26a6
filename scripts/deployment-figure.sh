#!/usr/bin/env bash
# The deployment figure in docs/performance.md: on a local cluster (3 servers, 3 agents, release
# build), a service of 12 allocations rolled 3 at a time with min_healthy_time = 1s: how long
# `job run` takes from submission to "deployment successful" for a new version (4 waves, each
# at least 1 s healthy: 4 s is the floor), and with 3 canaries promoted by auto_promote (the
# canaries' wave, then 3 waves). Each rollout runs ROUNDS times (default 5). Leaves nothing behind.
#
#   cargo build --release -p helios-server -p helios-client -p helios-cli && scripts/deployment-figure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export PATH=$PWD/target/release:$PATH
rounds="${ROUNDS:-5}"
scripts/local-cluster.sh clean >/dev/null 2>&1 || true
HELIOS_BIN=target/release scripts/local-cluster.sh start >/dev/null
work="$(mktemp -d)"
cleanup() {
    helios-cli job stop figure >/dev/null 2>&1 || true
    # Every allocation stopped before the agents go (their tasks would outlive them).
    for _ in $(seq 1 300); do
        helios-cli alloc list --job figure --json 2>/dev/null |
            python3 -c 'import json, sys; sys.exit(any(a["client_status"] in ("pending", "running") for a in json.load(sys.stdin)))' &&
            break
        sleep 0.2
    done
    (cd "$root" && scripts/local-cluster.sh clean >/dev/null 2>&1) || true
    rm -rf "$work"
}
trap cleanup EXIT

# Version ARG of the job (its task's argument), with extra update lines.
job_file() {
    cat <<HCL
job "figure" {
  group "web" {
    count = 12
    update {
      max_parallel     = 3
      min_healthy_time = "1s"
      healthy_deadline = "1m"
      $2
    }
    task "web" {
      driver = "exec"
      config {
        command = "sleep"
        args    = ["$1"]
      }
      resources {
        cpu    = 20
        memory = 16
      }
    }
  }
}
HCL
}

# Seconds `job run` takes for version ARG, which must end with the deployment successful.
timed_run() {
    job_file "$1" "$2" >"$work/figure.hcl"
    local start end
    start="$(date +%s.%N)"
    helios-cli job run "$work/figure.hcl" >"$work/out" 2>&1 || { cat "$work/out" >&2; exit 1; }
    end="$(date +%s.%N)"
    grep -q "successful: Deployment completed successfully" "$work/out" || { cat "$work/out" >&2; exit 1; }
    awk "BEGIN { printf \"%.2f\", $end - $start }"
}

summary() { # label, then the times
    local label="$1"
    shift
    printf '%s\n' "$@" | sort -n | awk -v label="$label" '{ t[NR] = $1 } END {
        printf "%s: min %.2f s, median %.2f s, max %.2f s over %d rollouts\n", label, t[1], t[int((NR + 1) / 2)], t[NR], NR }'
}

timed_run 1000 "" >/dev/null # version 0: the first placement
arg=1000
rolling=()
for _ in $(seq 1 "$rounds"); do
    arg=$((arg + 1))
    rolling+=("$(timed_run "$arg" "")")
done
canary=()
for _ in $(seq 1 "$rounds"); do
    arg=$((arg + 1))
    canary+=("$(timed_run "$arg" "canary = 3
      auto_promote = true")")
done
summary "12 allocations, max_parallel 3, min_healthy_time 1s (floor 4 s)" "${rolling[@]}"
summary "the same with 3 canaries and auto_promote (floor 4 s: the canaries, then 3 waves)" "${canary[@]}"
