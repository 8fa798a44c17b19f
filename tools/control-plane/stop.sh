#!/usr/bin/env bash
# Stops a control plane started by start.sh DIR.
set -euo pipefail
dir=${1:?usage: stop.sh DIR}
[ -f "$dir/pids" ] && kill $(cat "$dir/pids") 2>/dev/null || true
