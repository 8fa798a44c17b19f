#!/usr/bin/env bash
# Restarts the kube-apiserver of a control plane started by start.sh DIR,
# as a crash and a supervisor would: SIGKILL (or SIGTERM with --graceful),
# then the same server again on the same port, certificates and etcd (whose
# data stays). Returns once /readyz is ok again.
#
#   tools/control-plane/restart-apiserver.sh DIR [--graceful] [--down SECONDS]
#
# --down keeps it stopped that long first (an outage, not only a restart).
set -euo pipefail
dir=${1:?usage: restart-apiserver.sh DIR [--graceful] [--down SECONDS]}
shift
signal=KILL
down=0
while [ $# -gt 0 ]; do
  case "$1" in
    --graceful) signal=TERM ;;
    --down) down=${2:?--down needs seconds}; shift ;;
    *) echo "restart-apiserver.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
read -r etcd_pid api_pid < "$dir/pids"
kill -"$signal" "$api_pid" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$api_pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$api_pid" 2>/dev/null || true
sleep "$down"
"$dir/apiserver.sh" >> "$dir/kube-apiserver.log" 2>&1 &
api_pid=$!
echo "$etcd_pid $api_pid" > "$dir/pids"
port=$(cat "$dir/api-port")
for _ in $(seq 1 300); do
  if curl -sf --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
       "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    exit 0
  fi
  kill -0 "$api_pid" 2>/dev/null || break
  sleep 0.2
done
echo "restart-apiserver: not ready again; last lines of its log:" >&2
tail -n 20 "$dir/kube-apiserver.log" >&2
exit 1
