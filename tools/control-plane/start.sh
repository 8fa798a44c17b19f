#!/usr/bin/env bash
# Starts a real control plane on 127.0.0.1 the way controller-runtime's
# envtest does: etcd (temp data dir, --unsafe-no-fsync) and kube-apiserver
# (generated CA, serving cert, service-account keys, RBAC, client-cert auth),
# plus an audit log of every write (for tests that count them).
#
#   tools/control-plane/start.sh DIR [--workloads] [--owner-pid PID]
#
# --workloads also starts what turns objects into running workloads:
# kube-controller-manager (Deployments -> ReplicaSets -> Pods, Jobs,
# StatefulSets, DaemonSets, the PV binder, service-account tokens, garbage
# collection, namespace deletion, HPAs: resynced every 2 s, not 15),
# kube-scheduler, and kwok, which plays
# the kubelet for simulated nodes (Node objects annotated
# kwok.x-k8s.io/node=fake; stages in kwok-stages.yaml). The cluster starts
# with no nodes: tests make the ones they need (ferry's tests make them
# from platform.yaml's nodegroups).
#
# Writes into DIR: admin.kubeconfig (O=system:masters), ferry.kubeconfig
# (user `ferry`, no rights until a test binds a role), audit.log, pids, and
# env (shell lines: FERRY_TEST_KUBECONFIG=..., FERRY_TEST_KUBECONFIG_RESTRICTED=...,
# FERRY_TEST_AUDIT_LOG=...), which it also prints. Returns once /readyz is ok.
# With --owner-pid, every daemon is killed when that process exits;
# otherwise stop them with tools/control-plane/stop.sh DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: start.sh DIR [--workloads] [--owner-pid PID]}
shift
owner=""
workloads=""
while [ $# -gt 0 ]; do
  case "$1" in
    --workloads) workloads=1 ;;
    --owner-pid) owner=${2:?--owner-pid needs a pid}; shift ;;
    *) echo "start.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
bin=$("$here/build.sh")
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pki="$dir/pki"
mkdir -p "$pki"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)

# --- PKI -------------------------------------------------------------------
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=ferry-test-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"
cat > "$pki/serving.ext" <<EXT
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.96.0.1, DNS:kubernetes.default.svc
extendedKeyUsage = serverAuth
EXT
client() { # name, subject
  ossl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr"
  printf 'extendedKeyUsage = clientAuth\n' > "$pki/client.ext"
  ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 7 -extfile "$pki/client.ext" -out "$pki/$1.crt"
}
ossl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$pki/serving.key" -out "$pki/serving.csr"
ossl x509 -req -in "$pki/serving.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 7 -extfile "$pki/serving.ext" -out "$pki/serving.crt"
client admin "/O=system:masters/CN=admin"
client ferry "/O=ferry/CN=ferry"
if [ -n "$workloads" ]; then
  # The bootstrap RBAC roles of these two users are what they run with on
  # a real cluster; kwok plays every kubelet, so it gets full rights.
  client controller-manager "/CN=system:kube-controller-manager"
  client scheduler "/CN=system:kube-scheduler"
  client kwok "/O=system:masters/CN=kwok"
fi
ossl genrsa -out "$pki/sa.key" 2048
ossl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# Audit every write (not reads): tests count requests by verb and user.
cat > "$dir/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
YAML

# --- etcd ------------------------------------------------------------------
rm -rf "$dir/etcd-data"
"$bin/etcd" --name ferry-test --data-dir "$dir/etcd-data" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "ferry-test=http://127.0.0.1:$peer_port" --log-level error \
  > "$dir/etcd.log" 2>&1 &
etcd_pid=$!

# --- kube-apiserver --------------------------------------------------------
# Written as a script so restart-apiserver.sh can start the same server
# again (same port, certificates and etcd) for tests of a control plane
# restart.
cat > "$dir/apiserver.sh" <<LAUNCH
#!/usr/bin/env bash
exec "$bin/kube-apiserver" \\
  --etcd-servers "http://127.0.0.1:$etcd_port" \\
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \\
  --cert-dir "$pki" --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" \\
  --client-ca-file "$pki/ca.crt" \\
  --authorization-mode RBAC \\
  --service-account-issuer https://kubernetes.default.svc \\
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \\
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \\
  --endpoint-reconciler-type none \\
  --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log" \\
  --audit-log-mode blocking --audit-log-format json
LAUNCH
chmod +x "$dir/apiserver.sh"
echo "$api_port" > "$dir/api-port"
"$dir/apiserver.sh" > "$dir/kube-apiserver.log" 2>&1 &
api_pid=$!
echo "$etcd_pid $api_pid" > "$dir/pids"

if [ -n "$owner" ]; then
  # Detached watchdog: take the daemons down with their owner. It keeps
  # the last pids it saw, so that a DIR deleted before the owner exits
  # (a test's temporary directory) still gets its daemons stopped; a pid
  # is killed only while it is still one of these binaries.
  nohup bash -c "
    last=''
    while kill -0 $owner 2>/dev/null; do
      p=\$(cat '$dir/pids' '$dir/workload-pids' 2>/dev/null | tr '\\n' ' ')
      [ -n \"\$p\" ] && last=\$p
      sleep 1
    done
    if [ -d '$dir' ]; then exec '$here/stop.sh' '$dir'; fi
    for pid in \$last; do
      grep -q control-plane/bin /proc/\$pid/cmdline 2>/dev/null && kill -9 \$pid
    done" >/dev/null 2>&1 &
fi

kubeconfig() { # user
  cat > "$dir/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
  - name: ferry-test
    cluster:
      server: https://127.0.0.1:$api_port
      certificate-authority: $pki/ca.crt
users:
  - name: $1
    user:
      client-certificate: $pki/$1.crt
      client-key: $pki/$1.key
contexts:
  - name: $1
    context: {cluster: ferry-test, user: $1}
current-context: $1
KC
}
kubeconfig admin
kubeconfig ferry
[ -z "$workloads" ] || { kubeconfig controller-manager; kubeconfig scheduler; kubeconfig kwok; }

api_ready() {
  curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1
}

ready=""
for _ in $(seq 1 300); do
  if api_ready; then ready=1; break; fi
  if ! kill -0 "$api_pid" 2>/dev/null || ! kill -0 "$etcd_pid" 2>/dev/null; then break; fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "control-plane: not ready; last lines of the logs:" >&2
  tail -n 20 "$dir/etcd.log" "$dir/kube-apiserver.log" >&2
  kill "$api_pid" "$etcd_pid" 2>/dev/null || true
  exit 1
fi

if [ -n "$workloads" ]; then
  # No serving ports (--secure-port 0), so several clusters run side by side.
  # kwok renews each simulated node's Lease as a kubelet does, so the node
  # lifecycle controller keeps them Ready (and lifts the not-ready taint
  # new nodes get).
  "$bin/kube-controller-manager" --kubeconfig "$dir/controller-manager.kubeconfig" \
    --secure-port 0 --leader-elect=false \
    --controllers '*,-node-ipam-controller' \
    --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --concurrent-deployment-syncs 10 --concurrent-replicaset-syncs 10 \
    --horizontal-pod-autoscaler-sync-period 2s \
    > "$dir/kube-controller-manager.log" 2>&1 &
  echo $! >> "$dir/workload-pids"
  "$bin/kube-scheduler" --kubeconfig "$dir/scheduler.kubeconfig" \
    --secure-port 0 --leader-elect=false \
    > "$dir/kube-scheduler.log" 2>&1 &
  echo $! >> "$dir/workload-pids"
  "$bin/kwok" --kubeconfig "$dir/kwok.kubeconfig" --config "$here/kwok-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --server-address "" --cidr 10.244.0.0/16 --node-ip 10.0.0.1 --node-lease-duration-seconds 40 \
    > "$dir/kwok.log" 2>&1 &
  echo $! >> "$dir/workload-pids"
  # Ready when the token controller has given kube-system its default
  # ServiceAccount (the controllers are syncing) and the scheduler answers.
  ready=""
  for _ in $(seq 1 300); do
    if curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
         "https://127.0.0.1:$api_port/api/v1/namespaces/default/serviceaccounts/default" >/dev/null 2>&1; then
      ready=1; break
    fi
    while read -r pid; do
      kill -0 "$pid" 2>/dev/null || { ready=""; break 2; }
    done < "$dir/workload-pids"
    sleep 0.2
  done
  if [ -z "$ready" ]; then
    echo "control-plane: controllers not ready; last lines of their logs:" >&2
    tail -n 20 "$dir/kube-controller-manager.log" "$dir/kube-scheduler.log" "$dir/kwok.log" >&2
    "$here/stop.sh" "$dir"
    exit 1
  fi
fi

{
  echo "FERRY_TEST_KUBECONFIG=$dir/admin.kubeconfig"
  echo "FERRY_TEST_KUBECONFIG_RESTRICTED=$dir/ferry.kubeconfig"
  echo "FERRY_TEST_AUDIT_LOG=$dir/audit.log"
  [ -z "$workloads" ] || echo "FERRY_TEST_WORKLOADS=1"
} | tee "$dir/env"
