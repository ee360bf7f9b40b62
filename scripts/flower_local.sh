#!/usr/bin/env bash
# A Flower deployment of spry on this machine: one SuperLink and N SuperNodes, each its own
# process on 127.0.0.1, each SuperNode with its own FLWR_HOME, Runtime port and shard
# (--node-config "partition-id=i num-partitions=N"). The script records the PIDs it starts and
# stops only those.
#
#   scripts/flower_local.sh start [N]              SuperLink + N SuperNodes (default 4); waits until all are online
#   scripts/flower_local.sh run CONFIG [OUT] [K=V ...]
#                                                  runs the Spry app (python/) on CONFIG (a run.toml, the
#                                                  file the in-process run reads), results in OUT; extra
#                                                  K=V are Flower run-config overrides (e.g. round-timeout=60)
#   scripts/flower_local.sh stop                   stops everything `start` started (SIGTERM, then SIGKILL after 30 s)
#   scripts/flower_local.sh kill-node I            SIGKILLs SuperNode I (a node dying mid-round)
#   scripts/flower_local.sh status                 the recorded processes and whether they are alive
#
# Environment: FLOWER_STATE (default target/flower: pids, logs, FLWR_HOMEs), FLOWER_PORT
# (default 9100: the SuperLink; SuperNode i uses FLOWER_PORT+1+i), FLOWER_VENV (a venv whose
# bin/ holds flwr, flower-superlink, flower-supernode and where spry_flwr is installed; default:
# the one of the `flwr` on PATH), FLOWER_NICE (default 10).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${FLOWER_STATE:-$ROOT/target/flower}
PORT=${FLOWER_PORT:-9100}
NICE=${FLOWER_NICE:-10}
if [ -n "${FLOWER_VENV:-}" ]; then
  BIN=$FLOWER_VENV/bin
else
  BIN=$(dirname "$(command -v flwr || echo /nonexistent/flwr)")
fi
[ -x "$BIN/flwr" ] || { echo "flwr not found: install it (python/ci.sh does) or set FLOWER_VENV" >&2; exit 2; }
# SuperLink/SuperNode start flower-superexec through PATH; no telemetry, no update check
export PATH=$BIN:$PATH FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PYTHONUNBUFFERED=1
CLI_HOME=$STATE/flwr-home/cli

write_cli_config() {
  mkdir -p "$CLI_HOME"
  cat > "$CLI_HOME/config.toml" <<TOML
[superlink]
default = "local"

[superlink.local]
address = "127.0.0.1:$PORT"
insecure = true
TOML
}

online_nodes() {
  FLWR_HOME=$CLI_HOME flwr supernode ls local --format json 2>/dev/null | python3 -c \
    "import sys,json;d=json.load(sys.stdin);print(sum(1 for x in d.get('nodes',[]) if x.get('status')=='online'))" \
    2>/dev/null || echo 0
}

start() {
  local n=${1:-4}
  if [ -s "$STATE/pids" ]; then
    echo "already started (see $STATE/pids); run '$0 stop' first" >&2; exit 1
  fi
  mkdir -p "$STATE/logs"
  : > "$STATE/pids"
  FLWR_HOME=$STATE/flwr-home/link nohup nice -n "$NICE" flower-superlink --insecure \
    --host 127.0.0.1 --port "$PORT" --disable-runtime-dependency-installation \
    > "$STATE/logs/superlink.log" 2>&1 &
  echo "superlink $!" >> "$STATE/pids"
  for ((i = 0; i < n; i++)); do
    FLWR_HOME=$STATE/flwr-home/sn$i nohup nice -n "$NICE" flower-supernode --insecure \
      --superlink "127.0.0.1:$PORT" --host 127.0.0.1 --port $((PORT + 1 + i)) \
      --node-config "partition-id=$i num-partitions=$n" \
      > "$STATE/logs/supernode$i.log" 2>&1 &
    echo "supernode$i $!" >> "$STATE/pids"
  done
  write_cli_config
  for t in $(seq 1 120); do
    if [ "$(online_nodes)" -ge "$n" ]; then
      echo "federation up: SuperLink 127.0.0.1:$PORT, $n SuperNodes online after ${t}s (logs: $STATE/logs)"
      return 0
    fi
    sleep 1
  done
  echo "timeout waiting for $n SuperNodes (logs: $STATE/logs)" >&2
  return 1
}

# the PIDs `start` recorded, and their flower-superexec children
recorded() { [ -f "$STATE/pids" ] && awk '{print $2}' "$STATE/pids" || true; }

stop() {
  local pids kids=() alive
  mapfile -t pids < <(recorded)
  [ ${#pids[@]} -eq 0 ] && { echo "nothing recorded in $STATE/pids"; return 0; }
  for p in "${pids[@]}"; do
    while read -r k; do [ -n "$k" ] && kids+=("$k"); done < <(pgrep -P "$p" || true)
  done
  # SuperNodes first (they deregister), then the SuperLink and the SuperExec children
  for p in "${pids[@]:1}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 2
  kill -TERM "${pids[0]}" "${kids[@]}" 2>/dev/null || true
  for t in $(seq 1 30); do
    alive=()
    for p in "${pids[@]}" "${kids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
    if [ ${#alive[@]} -eq 0 ]; then
      echo "stopped ${#pids[@]} processes and ${#kids[@]} SuperExec children"
      : > "$STATE/pids"
      return 0
    fi
    sleep 1
  done
  echo "SIGKILL ${alive[*]}"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  : > "$STATE/pids"
}

run() {
  local config=${1:?usage: $0 run CONFIG [OUT] [K=V ...]} out=${2:-$ROOT/runs/flower}
  shift; [ $# -gt 0 ] && shift
  config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
  mkdir -p "$out"; out=$(cd "$out" && pwd)
  local n; n=$(grep -c '^supernode' "$STATE/pids" 2>/dev/null || echo 1)
  local rc="spry-config=\"$config\" out-dir=\"$out\" min-nodes=$n"
  for kv in "$@"; do rc="$rc $kv"; done
  write_cli_config
  FLWR_HOME=$CLI_HOME flwr run "$ROOT/python" local --run-config "$rc" --stream
}

kill_node() {
  local i=${1:?usage: $0 kill-node I} p
  p=$(awk -v n="supernode$i" '$1 == n {print $2}' "$STATE/pids")
  [ -n "$p" ] || { echo "no supernode$i recorded" >&2; return 1; }
  # the node and its SuperExec (and through it the running ClientApp) die at once
  local kids; kids=$(pgrep -P "$p" || true)
  kill -KILL "$p" $kids 2>/dev/null || true
  echo "killed supernode$i (pid $p${kids:+, children $kids})"
}

status() {
  [ -f "$STATE/pids" ] || { echo "not started"; return 0; }
  while read -r name p; do
    if kill -0 "$p" 2>/dev/null; then echo "$name $p alive"; else echo "$name $p gone"; fi
  done < "$STATE/pids"
}

cmd=${1:-}
shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  run) run "$@" ;;
  kill-node) kill_node "$@" ;;
  status) status ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
