#!/usr/bin/env bash
# Builds the binaries ferry renders the platform repo with, at the versions
# its image ships: helm (Helm releases) and kustomize (kustomization
# directories); and, for the tests only, the OCI registry charts are pushed
# to (distribution's reference registry). From the Go module proxy (go
# install checks them against the Go checksum database) into
# .cache/render/bin. Once per machine, behind a stamp.
#
#   tools/render/build.sh    build if needed, print the bin directory
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
helm=v3.22.0
kustomize=v5.8.2   # v5.8.3 needs Go 1.27
registry=v3.1.2
out="$repo/.cache/render"
stamp="helm $helm kustomize $kustomize registry $registry $(go version)"
if [ -x "$out/bin/helm" ] && [ -x "$out/bin/kustomize" ] && [ -x "$out/bin/registry" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$out/bin"
  exit 0
fi
echo "render: building helm $helm, kustomize $kustomize and registry $registry (once per machine; about 8 minutes on 2 cores)" >&2
mkdir -p "$out/bin"
export CGO_ENABLED=0 GOBIN="$out/bin"
go install -trimpath "helm.sh/helm/v3/cmd/helm@$helm"
go install -trimpath "sigs.k8s.io/kustomize/kustomize/v5@$kustomize"
go install -trimpath "github.com/distribution/distribution/v3/cmd/registry@$registry"
echo "$stamp" > "$out/stamp"
echo "$out/bin"
