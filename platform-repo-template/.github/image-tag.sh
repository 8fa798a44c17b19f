#!/usr/bin/env bash
# The tag of the image built from directory $1: its Dockerfile's
# `ARG VERSION=` and the first 12 hex digits of the sha256 of its Dockerfile
# and requirements.txt. A change to either is a new tag (ECR's are
# immutable, so a rebuilt image under an old tag would never be pushed), and
# the manifests name exactly what was built (a test of ferry's checks them).
set -euo pipefail
dir=${1:?image directory}
version=$(sed -n 's/^ARG VERSION=//p' "$dir/Dockerfile")
[ -n "$version" ] || { echo "$dir/Dockerfile has no ARG VERSION=" >&2; exit 1; }
echo "$version-$(cat "$dir/Dockerfile" "$dir/requirements.txt" | sha256sum | cut -c1-12)"
