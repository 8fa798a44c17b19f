#!/usr/bin/env bash
# Terraform $TF_VERSION from releases.hashicorp.com, checked against the
# release's SHA256SUMS, into /usr/local/bin.
set -euo pipefail
version=${TF_VERSION:?TF_VERSION}
zip="terraform_${version}_linux_amd64.zip"
dir=$(mktemp -d)
cd "$dir"
curl -sfSLO "https://releases.hashicorp.com/terraform/${version}/${zip}"
curl -sfSLO "https://releases.hashicorp.com/terraform/${version}/terraform_${version}_SHA256SUMS"
grep " ${zip}\$" "terraform_${version}_SHA256SUMS" | sha256sum -c -
unzip -q "$zip" terraform
sudo install -m 0755 terraform /usr/local/bin/terraform
terraform version
