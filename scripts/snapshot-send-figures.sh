#!/usr/bin/env bash
# Figures for docs/performance.md ("Stored data"): restores a snapshot file into a new
# three-server cluster (127.0.0.1:50061-50063, data in $DIR), lets it settle, then joins a fourth
# server, which receives the leader's snapshot over the peer API. Prints the restore and join
# times, the leader's and the new server's memory, and every server's digest.
#
#   cargo build --release -p helios-server -p helios-cli --bins --example store_figures
#   target/release/examples/store_figures /tmp/m3 1000000      # writes /tmp/m3/figures.snap
#   scripts/snapshot-send-figures.sh /tmp/m3/figures.snap
set -euo pipefail
SNAP=${1:?usage: snapshot-send-figures.sh SNAPSHOT_FILE}
DIR=${DIR:-/tmp/helios-send-figures}
B="$(cd "$(dirname "$0")/.." && pwd)/target/release"
stop() { pkill -f "helios-server --node-id [1-4] --rpc-addr 127.0.0.1:5006" || true; }
trap stop EXIT
stop
rm -rf "$DIR" && mkdir -p "$DIR"
peers=(--peer 1=127.0.0.1:50061 --peer 2=127.0.0.1:50062 --peer 3=127.0.0.1:50063)
for i in 1 2 3; do
    extra=(); [ "$i" = 1 ] && extra=(--bootstrap)
    # A short snapshot interval, so the log behind the restore is purged and the fourth server
    # must be sent a snapshot.
    "$B/helios-server" --node-id "$i" --rpc-addr "127.0.0.1:5006$i" "${peers[@]}" --data-dir "$DIR" \
        --snapshot-every 50 "${extra[@]}" >"$DIR/server-$i.log" 2>&1 &
done
cli=("$B/helios-cli" --server-addr 127.0.0.1:50061)
until "${cli[@]}" server members 2>/dev/null | grep -q leader; do sleep 0.2; done
mib() { awk -v f="$2:" '$1==f {print int($2/1024) " MiB"}' "/proc/$1/status"; }
seconds() { echo "$(date +%s.%N) - $1" | bc; }

start=$(date +%s.%N)
"${cli[@]}" operator snapshot restore "$SNAP"
echo "restore: $(seconds "$start") s"
# The restored state settles first (its nodes are gone: the scheduler marks their work lost).
previous=""
while true; do
    last=$("${cli[@]}" server members | awk '$3=="leader" {print $7}')
    [ "$last" = "$previous" ] && break
    previous=$last
    sleep 10
done
leader=$("${cli[@]}" server members | awk '$3=="leader" {print $1}')
leader_pid=$(pgrep -f "helios-server --node-id $leader ")
"$B/helios-server" --node-id 4 --rpc-addr 127.0.0.1:50064 --data-dir "$DIR" >"$DIR/server-4.log" 2>&1 &
new_pid=$!
sleep 1
echo 5 >"/proc/$leader_pid/clear_refs" # resets the leader's peak (VmHWM)
before=$(mib "$leader_pid" VmRSS)
start=$(date +%s.%N)
"${cli[@]}" server join 4=127.0.0.1:50064
echo "join (snapshot built, sent and installed): $(seconds "$start") s"
echo "leader: resident $before before, peak $(mib "$leader_pid" VmHWM) during the join"
echo "new server: peak $(mib "$new_pid" VmHWM) (its whole life)"
"${cli[@]}" server digest
