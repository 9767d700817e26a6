#!/usr/bin/env bash
# Starts (or stops) a local Helios cluster exactly as the README's multi-node quick start does:
# three servers on 127.0.0.1:50051-50053 and three client agents on 127.0.0.1:60051-60053, with
# data and logs under ./.helios-local/.
#
#   scripts/local-cluster.sh start    build, start, wait for a leader and three ready nodes
#   AGENTS=0 scripts/local-cluster.sh start    servers only (for load generators such as
#                                     `helios-cli bench submit` that should not run the jobs)
#   scripts/local-cluster.sh status   server members
#   scripts/local-cluster.sh stop     SIGTERM every server
#   scripts/local-cluster.sh clean    stop and delete the data
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state="$root/.helios-local"
bin="$root/target/release"
peers=(--peer 1=127.0.0.1:50051 --peer 2=127.0.0.1:50052 --peer 3=127.0.0.1:50053)

stop() {
    for pidfile in "$state"/*.pid; do
        [ -e "$pidfile" ] || continue
        kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

case "${1:-start}" in
start)
    (cd "$root" && cargo build --release -p helios-server -p helios-client -p helios-cli)
    mkdir -p "$state"
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
        (cd "$state" && exec "$bin/helios-server" --node-id "$id" --rpc-addr "127.0.0.1:5005$id" \
            "${peers[@]}" "${extra[@]}" </dev/null >"server-$id.log" 2>&1) &
        echo $! >"$state/server-$id.pid"
    done
    agents="${AGENTS:-3}"
    for id in $(seq 1 "$agents"); do
        if [ -e "$state/client-$id.pid" ] && kill -0 "$(cat "$state/client-$id.pid")" 2>/dev/null; then
            continue
        fi
        mkdir -p "$state/client-$id"
        (cd "$state" && exec "$bin/helios-client" --node-id "$id" --data-dir "client-$id" \
            --server-addr http://127.0.0.1:50051,http://127.0.0.1:50052,http://127.0.0.1:50053 \
            --client-rpc-addr "127.0.0.1:6005$id" </dev/null >"client-$id.log" 2>&1) &
        echo $! >"$state/client-$id.pid"
    done
    for _ in $(seq 1 100); do
        if "$bin/helios-cli" server members >/dev/null 2>&1 && [ "$("$bin/helios-cli" node list 2>/dev/null | grep -c ' ready ')" = "$agents" ]; then
            "$bin/helios-cli" server members
            echo
            "$bin/helios-cli" node list
            echo
            echo "Cluster ready. Try: $bin/helios-cli job run --name hello echo -- 'Hello, Helios'"
            echo "Logs: $state/{server,client}-*.log   Stop: scripts/local-cluster.sh stop"
            exit 0
        fi
        sleep 0.2
    done
    echo "the cluster did not come up (a leader and $agents ready nodes); see $state/*.log" >&2
    exit 1
    ;;
status) "$bin/helios-cli" server members ;;
stop) stop ;;
clean) stop; rm -rf "$state" ;;
*) echo "usage: $0 start|status|stop|clean" >&2; exit 2 ;;
esac
