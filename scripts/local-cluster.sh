#!/usr/bin/env bash
# Starts (or stops) a local Helios cluster exactly as the README's multi-node quick start does:
# three servers on 127.0.0.1:50051-50053 and three client agents on 127.0.0.1:60051-60053, with
# data and logs under ./.helios-local/.
#
#   scripts/local-cluster.sh start    build, start, wait for a leader and three ready nodes
#   scripts/local-cluster.sh start --secure
#                                     the same with mutual TLS and ACLs: makes a CA and server,
#                                     client and CLI certificates (.helios-local/tls/) and a
#                                     cluster key, bootstraps ACLs (the management token is kept
#                                     in .helios-local/bootstrap.token), and prints the variables
#                                     that point helios-cli at them
#   AGENTS=0 scripts/local-cluster.sh start    servers only (for load generators such as
#                                     `helios-cli bench submit` that should not run the jobs)
#   RAW_EXEC=1 scripts/local-cluster.sh start  agents offer raw_exec beside exec (as root; an
#                                     agent that is not root offers raw_exec alone anyway)
#   scripts/local-cluster.sh status   server members
#   scripts/local-cluster.sh stop     SIGTERM every server
#   scripts/local-cluster.sh clean    stop and delete the data
#
# For tests: HELIOS_LOCAL_DIR (state directory), HELIOS_BIN (prebuilt binaries; skips the
# build), SERVER_PORTS and AGENT_PORTS (three space-separated ports each).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state="${HELIOS_LOCAL_DIR:-$root/.helios-local}"
# Absolute: the servers and agents run from inside the state directory.
bin="$(realpath -m "${HELIOS_BIN:-$root/target/release}")"
read -r -a server_ports <<<"${SERVER_PORTS:-50051 50052 50053}"
read -r -a agent_ports <<<"${AGENT_PORTS:-60051 60052 60053}"
peers=()
addrs=()
for id in 1 2 3; do
    peers+=(--peer "$id=127.0.0.1:${server_ports[$((id - 1))]}")
    addrs+=("127.0.0.1:${server_ports[$((id - 1))]}")
done
all_addrs="$(IFS=,; echo "${addrs[*]}")"

stop() {
    for pidfile in "$state"/*.pid; do
        [ -e "$pidfile" ] || continue
        kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

# Makes what a secure cluster needs, once: the CA, a certificate per role, a cluster key.
make_secrets() {
    mkdir -p "$state/tls"
    if [ ! -e "$state/tls/helios-agent-ca.pem" ]; then
        (cd "$state/tls" && "$bin/helios-cli" tls ca create >/dev/null)
    fi
    for role in server client cli; do
        if [ ! -e "$state/tls/global-$role-helios.pem" ]; then
            (cd "$state/tls" && rm -f "global-$role-helios-key.pem" &&
                "$bin/helios-cli" tls cert create "--$role" >/dev/null)
        fi
    done
    if [ ! -e "$state/helios-cluster.key" ]; then
        (umask 077 && "$bin/helios-cli" operator keygen >"$state/helios-cluster.key")
    fi
}

secure=false
if [ "${2:-}" = "--secure" ] || [ "${SECURE:-}" = 1 ]; then secure=true; fi
# A cluster made secure stays secure: its data would otherwise come back up in plaintext.
if [ -e "$state/tls/helios-agent-ca.pem" ]; then secure=true; fi
if $secure && [ -e "$state/tls/helios-agent-ca.pem" ]; then
    export HELIOS_CACERT="$state/tls/helios-agent-ca.pem"
    export HELIOS_CLIENT_CERT="$state/tls/global-cli-helios.pem"
    export HELIOS_CLIENT_KEY="$state/tls/global-cli-helios-key.pem"
    if [ -s "$state/bootstrap.token" ]; then HELIOS_TOKEN="$(cat "$state/bootstrap.token")"; export HELIOS_TOKEN; fi
fi

case "${1:-start}" in
start)
    if [ -z "${HELIOS_BIN:-}" ]; then
        (cd "$root" && cargo build --release -p helios-server -p helios-client -p helios-cli)
    fi
    mkdir -p "$state"
    server_tls=()
    client_tls=()
    if $secure; then
        make_secrets
        server_tls=(--tls-ca tls/helios-agent-ca.pem --tls-cert tls/global-server-helios.pem --tls-key tls/global-server-helios-key.pem --acl-enabled)
        client_tls=(--tls-ca tls/helios-agent-ca.pem --tls-cert tls/global-client-helios.pem --tls-key tls/global-client-helios-key.pem)
        export HELIOS_CACERT="$state/tls/helios-agent-ca.pem"
        export HELIOS_CLIENT_CERT="$state/tls/global-cli-helios.pem"
        export HELIOS_CLIENT_KEY="$state/tls/global-cli-helios-key.pem"
    fi
    export HELIOS_ADDR="$all_addrs"
    for id in 1 2 3; do
        if [ -e "$state/server-$id.pid" ] && kill -0 "$(cat "$state/server-$id.pid")" 2>/dev/null; then
            echo "server $id already running"
            continue
        fi
        extra=()
        # Bootstrap only a brand-new cluster; a restart rejoins from its data.
        if [ "$id" = 1 ] && [ ! -e "$state/helios-node-1.db" ]; then extra=(--bootstrap); fi
        # exec: the background subshell becomes the server, so nothing else holds this script's
        # stdout open after it exits.
        (cd "$state" && exec "$bin/helios-server" --node-id "$id" --rpc-addr "${addrs[$((id - 1))]}" \
            "${peers[@]}" "${extra[@]}" "${server_tls[@]}" </dev/null >"server-$id.log" 2>&1) &
        echo $! >"$state/server-$id.pid"
    done
    if $secure; then
        # The first management token, made once and kept (readable by its owner only).
        if [ ! -s "$state/bootstrap.token" ]; then
            for _ in $(seq 1 150); do
                if out="$("$bin/helios-cli" acl bootstrap 2>&1)"; then
                    (umask 077 && echo "$out" | awk -F' = ' '/^Secret ID/ {print $2}' >"$state/bootstrap.token")
                    break
                fi
                case "$out" in *"bootstrapped already"*)
                    echo "ACLs were bootstrapped, but $state/bootstrap.token is gone: $out" >&2
                    exit 1 ;;
                esac
                sleep 0.2
            done
        fi
        if [ ! -s "$state/bootstrap.token" ]; then
            echo "could not bootstrap ACLs; see $state/server-*.log" >&2
            exit 1
        fi
        HELIOS_TOKEN="$(cat "$state/bootstrap.token")"
        export HELIOS_TOKEN
    fi
    agents="${AGENTS:-3}"
    # exec isolates tasks and needs root; without it the agents offer raw_exec (no isolation).
    # RAW_EXEC=1 offers raw_exec beside exec (the benchmarks compare the two).
    driver_flags=()
    if [ "$(id -u)" -ne 0 ] || [ "${RAW_EXEC:-0}" = 1 ]; then
        driver_flags=(--enable-raw-exec)
    fi
    for id in $(seq 1 "$agents"); do
        if [ -e "$state/client-$id.pid" ] && kill -0 "$(cat "$state/client-$id.pid")" 2>/dev/null; then
            continue
        fi
        mkdir -p "$state/client-$id"
        # The agents share this host's ports: each gives out its own thousand dynamic ports,
        # as separate machines would not collide.
        low=$((20000 + (id - 1) * 1000))
        (cd "$state" && exec "$bin/helios-client" --node-id "$id" --data-dir "client-$id" \
            --server-addr "$all_addrs" "${client_tls[@]}" "${driver_flags[@]}" \
            --dynamic-ports "$low-$((low + 999))" \
            --client-rpc-addr "127.0.0.1:${agent_ports[$((id - 1))]}" </dev/null >"client-$id.log" 2>&1) &
        echo $! >"$state/client-$id.pid"
    done
    for _ in $(seq 1 150); do
        if "$bin/helios-cli" server members >/dev/null 2>&1 && [ "$("$bin/helios-cli" node list 2>/dev/null | grep -c ' ready ')" = "$agents" ]; then
            "$bin/helios-cli" server members
            echo
            "$bin/helios-cli" node list
            echo
            if $secure; then
                echo "Mutual TLS and ACLs are on. Point helios-cli at the cluster, with the management token, with:"
                echo "  export HELIOS_ADDR=$all_addrs"
                echo "  export HELIOS_TOKEN=$HELIOS_TOKEN"
                echo "  export HELIOS_CACERT=$HELIOS_CACERT"
                echo "  export HELIOS_CLIENT_CERT=$HELIOS_CLIENT_CERT"
                echo "  export HELIOS_CLIENT_KEY=$HELIOS_CLIENT_KEY"
            fi
            if [ "$(id -u)" -ne 0 ]; then
                echo "Not root: the agents offer raw_exec, not exec (which isolates tasks and needs root)."
                echo "Cluster ready. Try: $bin/helios-cli job run --name hello --driver raw_exec echo -- 'Hello, Helios'"
            else
                echo "Cluster ready. Try: $bin/helios-cli job run --name hello echo -- 'Hello, Helios'"
            fi
            echo "Logs: $state/{server,client}-*.log   Stop: scripts/local-cluster.sh stop"
            exit 0
        fi
        sleep 0.2
    done
    echo "the cluster did not come up (a leader and $agents ready nodes); see $state/*.log" >&2
    exit 1
    ;;
status) "$bin/helios-cli" --server-addr "$all_addrs" server members ;;
stop) stop ;;
clean) stop; rm -rf "$state" ;;
*) echo "usage: $0 start [--secure]|status|stop|clean" >&2; exit 2 ;;
esac
