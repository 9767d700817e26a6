#!/usr/bin/env bash
# The rolling update figure in docs/performance.md: a local cluster of three servers and ten
# agents (release build), a service of 100 exec allocations with update { max_parallel = 10,
# min_healthy_time = "2s" }, then three new versions, each timed from `job run` until its
# deployment is successful (every allocation of the new version healthy; `job run` returns
# then). Leaves nothing behind.
#
#   cargo build --release -p helios-server -p helios-client -p helios-cli && scripts/rollout-figure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export PATH=$PWD/target/release:$PATH
scripts/local-cluster.sh clean >/dev/null 2>&1 || true
AGENTS=10 AGENT_PORTS="$(seq -s ' ' 60051 60060)" HELIOS_BIN=target/release scripts/local-cluster.sh start >/dev/null
cat > /tmp/rollout.nomad <<'JOB'
job "rollout" {
  update {
    max_parallel     = 10
    min_healthy_time = "2s"
  }
  group "web" {
    count = 100
    task "web" {
      driver = "exec"
      config {
        command = "sleep"
        args    = ["3000"]
      }
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
JOB
cd /tmp
helios-cli job run /tmp/rollout.nomad | tail -1
for v in 3001 3002 3003; do
  sed -i "s/\"30[0-9][0-9]\"/\"$v\"/" /tmp/rollout.nomad
  start=$(date +%s.%N)
  helios-cli job run /tmp/rollout.nomad | tail -1
  end=$(date +%s.%N)
  echo "version with args $v: $(awk "BEGIN { printf \"%.1f\", $end - $start }") s from job run to its deployment successful"
done
helios-cli job stop rollout >/dev/null
# The agents stop the tasks; stopping the agents first would leave them running.
for _ in $(seq 1 300); do
  helios-cli job status rollout --json |
    python3 -c 'import json, sys; sys.exit(any(a["client_status"] in ("pending", "running") for a in json.load(sys.stdin)["allocations"]))' &&
    break
  sleep 0.2
done
cd "$root" && scripts/local-cluster.sh clean >/dev/null 2>&1
