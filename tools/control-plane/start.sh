#!/usr/bin/env bash
# Starts a real control plane on 127.0.0.1 the way controller-runtime's
# envtest does: etcd (temp data dir, --unsafe-no-fsync) and kube-apiserver
# (generated CA, serving cert, service-account keys, RBAC, client-cert auth),
# plus an audit log of every write (for tests that count them).
#
#   tools/control-plane/start.sh DIR [--owner-pid PID]
#
# Writes into DIR: admin.kubeconfig (O=system:masters), ferry.kubeconfig
# (user `ferry`, no rights until a test binds a role), audit.log, pids, and
# env (shell lines: FERRY_TEST_KUBECONFIG=..., FERRY_TEST_KUBECONFIG_RESTRICTED=...,
# FERRY_TEST_AUDIT_LOG=...), which it also prints. Returns once /readyz is ok.
# With --owner-pid, both daemons are killed when that process exits;
# otherwise stop them with tools/control-plane/stop.sh DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: start.sh DIR [--owner-pid PID]}
owner=""
[ "${2:-}" = "--owner-pid" ] && owner=${3:?--owner-pid needs a pid}
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
  # Detached watchdog: take the daemons down with their owner.
  nohup bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done; exec '$here/stop.sh' '$dir'" \
    >/dev/null 2>&1 &
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

for _ in $(seq 1 300); do
  if curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
       "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; then
    {
      echo "FERRY_TEST_KUBECONFIG=$dir/admin.kubeconfig"
      echo "FERRY_TEST_KUBECONFIG_RESTRICTED=$dir/ferry.kubeconfig"
      echo "FERRY_TEST_AUDIT_LOG=$dir/audit.log"
    } | tee "$dir/env"
    exit 0
  fi
  if ! kill -0 "$api_pid" 2>/dev/null || ! kill -0 "$etcd_pid" 2>/dev/null; then break; fi
  sleep 0.2
done
echo "control-plane: not ready; last lines of the logs:" >&2
tail -n 20 "$dir/etcd.log" "$dir/kube-apiserver.log" >&2
kill "$api_pid" "$etcd_pid" 2>/dev/null || true
exit 1
