#!/usr/bin/env bash
# The health-check figure in docs/performance.md: one agent (release build) running 10
# allocations of a busybox web server, each with 10 services of 10 http checks (1,000 checks at
# a 10 s interval), and the same 10 allocations without checks; the agent's CPU time over 60 s
# of each, once every check passes, and its memory. Leaves nothing behind.
#
#   cargo build --release -p helios-server -p helios-client -p helios-cli && scripts/check-cpu-figure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export PATH=$PWD/target/release:$PATH
scripts/local-cluster.sh clean >/dev/null 2>&1 || true
AGENTS=1 HELIOS_BIN=target/release scripts/local-cluster.sh start >/dev/null
agent_pid="$(cat .helios-local/client-1.pid)"
ticks="$(getconf CLK_TCK)"

# A job of 10 web servers; with CHECKS=1, 10 services of 10 http checks each per allocation.
job_file() {
  echo "job \"checks\" {"
  echo "  group \"web\" {"
  echo "    count = 10"
  echo "    network {"
  echo "      port \"http\" {}"
  echo "    }"
  if [ "$1" = 1 ]; then
    for s in $(seq 1 10); do
      echo "    service {"
      echo "      name     = \"web-$s\""
      echo "      port     = \"http\""
      echo "      provider = \"nomad\""
      for c in $(seq 1 10); do
        echo "      check {"
        echo "        name     = \"c$c\""
        echo "        type     = \"http\""
        echo "        path     = \"/health\""
        echo "        interval = \"10s\""
        echo "        timeout  = \"2s\""
        echo "      }"
      done
      echo "    }"
    done
  fi
  cat <<'TASK'
    task "web" {
      driver = "exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo ok > $NOMAD_TASK_DIR/health && exec busybox httpd -f -p $NOMAD_PORT_http -h $NOMAD_TASK_DIR"]
      }
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
TASK
}

# The agent's user+system CPU ticks so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$agent_pid/stat"; }

measure() {
  local label="$1" before after
  before="$(cpu_ticks)"
  sleep 60
  after="$(cpu_ticks)"
  local rss
  rss="$(awk '/VmRSS/ { print $2 }' "/proc/$agent_pid/status")"
  echo "$label: agent CPU $(awk "BEGIN { printf \"%.2f\", ($after - $before) / $ticks / 60 * 100 }")% of one core over 60 s, RSS $((rss / 1024)) MiB"
}

wait_stopped() {
  for _ in $(seq 1 300); do
    helios-cli job status checks --json |
      python3 -c 'import json, sys; sys.exit(any(a["client_status"] in ("pending", "running") for a in json.load(sys.stdin)["allocations"]))' &&
      return
    sleep 0.2
  done
}

cd /tmp
for checks in 0 1; do
  job_file "$checks" >/tmp/checks.nomad
  helios-cli job run /tmp/checks.nomad | tail -1
  if [ "$checks" = 1 ]; then
    # Every service's 10 instances healthy: all 1,000 checks pass.
    for _ in $(seq 1 600); do
      healthy="$(helios-cli service list --json | python3 -c 'import json, sys; print(sum(s["healthy"] for s in json.load(sys.stdin)))')"
      [ "$healthy" = 100 ] && break
      sleep 0.5
    done
    [ "$healthy" = 100 ] || { echo "only $healthy of 100 instances healthy" >&2; exit 1; }
    echo "all 100 instances (1,000 checks) passing"
    measure "10 allocations, 1,000 http checks every 10 s"
  else
    measure "10 allocations, no checks"
  fi
  helios-cli job stop checks >/dev/null
  wait_stopped
  helios-cli system gc >/dev/null 2>&1 || true
done
cd "$root" && scripts/local-cluster.sh clean >/dev/null 2>&1
