#!/usr/bin/env bash
# Writes a stored-format fixture with the binaries in HELIOS_BIN (default target/debug): a
# one-server cluster with a cluster key, ACLs and one agent runs a few jobs (a service, a
# finished batch job, a stopped job, a purged job, a job with two versions), then stops; its
# database (Raft log and state) is kept as helios-server/tests/fixtures/format-N/helios-node-1.db,
# and its snapshot, as `operator snapshot save` writes it, as snapshot.bin.
#
#   scripts/write-format-fixture.sh N
#   HELIOS_BIN=$(scripts/build-previous-format.sh) scripts/write-format-fixture.sh N   # an older format
#
# Run it with the build that writes format N, once, when that format is introduced; the
# fixture tests (helios-server/tests/formats.rs) then check that every later build opens it.
set -euo pipefail
format="${1:?usage: $0 FORMAT}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${HELIOS_BIN:-$root/target/debug}"
out="$root/helios-server/tests/fixtures/format-$format"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=64151
agent_port=64161
"$bin/helios-cli" operator keygen >"$work/key"
(cd "$work" && exec "$bin/helios-server" --node-id 1 --rpc-addr 127.0.0.1:$port --peer 1=127.0.0.1:$port \
    --bootstrap --data-dir "$work/server" --cluster-key-file "$work/key" --acl-enabled >"$work/server.log" 2>&1) &
pids+=($!)
export HELIOS_SERVER_ADDR="http://127.0.0.1:$port"
cli() { "$bin/helios-cli" --server-addr "$HELIOS_SERVER_ADDR" "$@"; }
for _ in $(seq 100); do cli acl bootstrap >"$work/bootstrap" 2>/dev/null && break; sleep 0.2; done
export HELIOS_TOKEN="$(awk '/Secret/ {print $NF}' "$work/bootstrap")"
[ -n "$HELIOS_TOKEN" ] || { echo "no bootstrap token"; cat "$work/server.log"; exit 1; }
cat >"$work/ops.hcl" <<'HCL'
namespace "default" { policy = "write" }
node { policy = "read" }
HCL
cli acl policy apply ops "$work/ops.hcl"
cli acl token create --name fixture-ops --policy ops >/dev/null
cli acl token create --name fixture-agent --policy ops >"$work/agent-token"
agent_token="$(awk '/Secret/ {print $NF}' "$work/agent-token")"
(cd "$work" && exec "$bin/helios-client" --node-id fixture-node --server-addr "$HELIOS_SERVER_ADDR" \
    --client-rpc-addr 127.0.0.1:$agent_port --data-dir "$work/client" --node-token "$HELIOS_TOKEN" >"$work/client.log" 2>&1) &
pids+=($!)
for _ in $(seq 100); do cli node list 2>/dev/null | grep -q ready && break; sleep 0.2; done

# From format 5, the service uses what that format added (a task user), so its fixture holds
# records only format 5 and later can read.
since_5=()
if [ "$format" -ge 5 ]; then since_5=(--user nobody); fi
cli job run -d --type service --name fixture-service --count 2 "${since_5[@]}" sleep -- 300
cli job run --name fixture-batch echo -- 'fixture done'
cli job run -d --type service --name fixture-versions sleep -- 300
cli job run -d --type service --name fixture-versions sleep -- 301
cli job run -d --type service --name fixture-stopped sleep -- 300
cli job stop fixture-stopped
cli job run -d --type service --name fixture-purged sleep -- 300
cli job stop --purge fixture-purged
# From format 7, a job with what that format added: a reschedule policy, a rolling update and
# an affinity (a version-4 job).
if [ "$format" -ge 7 ]; then
    cat >"$work/rolling.hcl" <<'HCL'
job "fixture-rolling" {
  group "g" {
    reschedule {
      delay     = "10s"
      unlimited = true
    }
    update {
      max_parallel     = 1
      min_healthy_time = "1s"
      healthy_deadline = "1m"
    }
    affinity {
      attribute = "${meta.rack}"
      value     = "r1"
      weight    = 50
    }
    task "t" {
      driver = "exec"
      config {
        command = "sleep"
        args    = ["300"]
      }
    }
  }
}
HCL
    cli job run -d "$work/rolling.hcl"
fi
# From format 8, a job with what that format added: a group service with an http check (a
# version-5 job), which the agent registers (an allocation holding its registrations).
if [ "$format" -ge 8 ]; then
    cat >"$work/services.hcl" <<'HCL'
job "fixture-services" {
  group "g" {
    network {
      port "http" {}
    }
    service {
      name     = "fixture-web"
      port     = "http"
      provider = "nomad"
      tags     = ["fixture"]
      check {
        type     = "http"
        path     = "/"
        interval = "1s"
        timeout  = "1s"
      }
    }
    task "t" {
      driver = "exec"
      config {
        command = "sleep"
        args    = ["300"]
      }
    }
  }
}
HCL
    cli job run -d "$work/services.hcl"
    for _ in $(seq 100); do cli service list 2>/dev/null | grep -q fixture-web && break; sleep 0.2; done
fi
# From format 9, a job with what that format added: a service rolled out with a canary (a
# version-6 job), its second version waiting in a deployment for promotion.
if [ "$format" -ge 9 ]; then
    cat >"$work/canary.hcl" <<'HCL'
job "fixture-canary" {
  type = "service"
  group "g" {
    update {
      canary           = 1
      max_parallel     = 1
      min_healthy_time = "1s"
      healthy_deadline = "1m"
    }
    task "t" {
      driver = "exec"
      config {
        command = "sleep"
        args    = ["300"]
      }
    }
  }
}
HCL
    cli job run -d "$work/canary.hcl"
    sed -i 's/"300"/"301"/' "$work/canary.hcl"
    cli job run -d "$work/canary.hcl"
fi
# From format 10, submissions carry request ids (job run sends one), remembered with their answers.
cli job status fixture-batch
cli alloc list
cli operator snapshot save "$work/snapshot.bin"

kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
mkdir -p "$out"
cp "$work/server/helios-node-1.db" "$out/helios-node-1.db"
cp "$work/snapshot.bin" "$out/snapshot.bin"
echo "wrote $out ($(du -h "$out/helios-node-1.db" | cut -f1))"
