#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and etcd
# from the Go modules pinned in this folder's go.mod/go.sum, and kwok at
# $kwok_version (its own go.mod, checked against the Go checksum database),
# through the Go module proxy into .cache/control-plane/bin.
# A stamp (hash of go.mod + go.sum + go version) makes it build once per
# machine; binaries are never committed.
#
#   tools/control-plane/build.sh          build if needed, print the bin dir
#   tools/control-plane/build.sh --regen  rewrite go.mod's replace block from
#                                         k8s.io/kubernetes' own go.mod, then tidy
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/.cache/control-plane"
bin="$out/bin"
cd "$here"

if [ "${1:-}" = "--regen" ]; then
  kver=$(awk '$1=="k8s.io/kubernetes"{print $2}' go.mod)
  stage="v0.${kver#v1.}"
  gomod=$(go mod download -json "k8s.io/kubernetes@$kver" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    sed '/^replace (/,$d' go.mod
    echo "replace ("
    # Staging modules are required at v0.0.0 and replaced in-tree upstream;
    # outside the tree each must point at its published v0.X.Y tag.
    awk -v v="$stage" '$1 ~ /^k8s\.io\// && $2=="v0.0.0" {print "\t" $1 " => " $1 " " v}' "$gomod"
    echo ")"
  } > go.mod.new
  mv go.mod.new go.mod
  GOFLAGS=-mod=mod go mod tidy
fi

# kwok plays the kubelet of simulated nodes.
kwok_version=v0.8.0
binaries=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

stamp=$( (cat go.mod go.sum build.sh; go version) | sha256sum | cut -d' ' -f1)
built=1
for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || built=""; done
if [ -n "$built" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$bin"
echo "control-plane: building ${binaries[*]} (once per machine; about 17 minutes on 2 cores)" >&2
export CGO_ENABLED=0
kver=$(awk '$1=="k8s.io/kubernetes"{print $2}' go.mod)
minor=${kver#v1.}; minor=${minor%%.*}
vpkg=k8s.io/component-base/version
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  go build -trimpath \
    -ldflags="-s -w -X $vpkg.gitVersion=$kver -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
    -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
go build -trimpath -ldflags="-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
# Outside this module: kwok pins its own client libraries.
(cd / && GOBIN="$bin" GOFLAGS=-mod=mod go install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$kwok_version")
echo "$stamp" > "$out/stamp"
"$bin/kube-apiserver" --version >&2
"$bin/etcd" --version | head -1 >&2
"$bin/kwok" --version >&2 || true
echo "$bin"
