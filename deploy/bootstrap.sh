#!/usr/bin/env bash
# ferry's bootstrap, as terraform/bootstrap.tf runs it (and the tests, on a
# test cluster): deploy/base with the IRSA role and image set, server-side;
# then deploy/monitoring if, and only if, the cluster serves the Prometheus
# operator's kinds, so a fresh cluster never fails on CRDs nothing installed
# yet. Run it again (Terraform does, on any change under deploy/) once the
# monitoring stack is in.
#
#   KUBECONFIG=... IMAGE=registry/ferry:tag ROLE=arn:aws:iam::...:role/ferry deploy/bootstrap.sh
set -euo pipefail
: "${IMAGE:?IMAGE (the ferry image, repository:tag) is required}"
: "${ROLE:?ROLE (the IAM role ARN for the ferry ServiceAccount) is required}"
here=$(cd "$(dirname "$0")" && pwd)
manager=${FIELD_MANAGER:-terraform}

# Inside deploy/: kustomize takes a resource only by a relative path.
overlay=$(mktemp -d "$here/.bootstrap-XXXXXX")
trap 'rm -rf "$overlay"' EXIT
cat > "$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: ["../base"]
images:
  - name: ghcr.io/ferry-dev/ferry
    newName: ${IMAGE%:*}
    newTag: ${IMAGE##*:}
patches:
  - target: {kind: ServiceAccount, name: ferry}
    patch: |
      - op: replace
        path: /metadata/annotations/eks.amazonaws.com~1role-arn
        value: $ROLE
YAML
kubectl apply --server-side --field-manager="$manager" -k "$overlay"

served=$(kubectl api-resources --api-group=monitoring.coreos.com -o name 2>/dev/null || true)
if grep -qx 'servicemonitors.monitoring.coreos.com' <<<"$served" \
  && grep -qx 'prometheusrules.monitoring.coreos.com' <<<"$served"; then
  kubectl apply --server-side --field-manager="$manager" -k "$here/monitoring"
else
  echo "bootstrap: the cluster serves no ServiceMonitor/PrometheusRule yet (the Prometheus operator's CRDs); deploy/monitoring skipped: run this again once the monitoring stack is installed" >&2
fi
