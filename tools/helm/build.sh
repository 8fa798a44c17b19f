#!/usr/bin/env bash
# Builds the helm binary ferry renders releases with, at the version its
# image ships, from the Go module proxy (go install checks it against the Go
# checksum database) into .cache/helm/bin. Once per machine, behind a stamp.
#
#   tools/helm/build.sh    build if needed, print the binary's path
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
version=v3.22.0
out="$repo/.cache/helm"
stamp="$version $(go version)"
if [ -x "$out/bin/helm" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$out/bin/helm"
  exit 0
fi
echo "helm: building $version (once per machine; about 4 minutes on 2 cores)" >&2
mkdir -p "$out/bin"
CGO_ENABLED=0 GOBIN="$out/bin" go install -trimpath "helm.sh/helm/v3/cmd/helm@$version"
echo "$stamp" > "$out/stamp"
echo "$out/bin/helm"
