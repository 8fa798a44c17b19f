#!/usr/bin/env bash
# Stops a control plane started by start.sh DIR: the apiserver first (it
# hangs once etcd is gone), then etcd; SIGKILL whatever outlives 5 s.
set -uo pipefail
dir=${1:?usage: stop.sh DIR}
[ -f "$dir/pids" ] || exit 0
read -r etcd_pid api_pid < "$dir/pids"
# Controllers, scheduler and kwok (start.sh --workloads) go first.
workload_pids=$(cat "$dir/workload-pids" 2>/dev/null || true)
for pid in $workload_pids $api_pid $etcd_pid; do
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
rm -f "$dir/pids" "$dir/workload-pids"
