# ferry itself, from deploy/: an overlay sets the IRSA role and the image,
# then server-side apply. From here on ferry keeps the platform in sync.
resource "terraform_data" "ferry" {
  count = var.bootstrap_ferry ? 1 : 0

  triggers_replace = {
    deploy = sha256(join("", [for f in sort(fileset("${path.module}/../deploy/base", "**")) : filesha256("${path.module}/../deploy/base/${f}")]))
    role   = module.ferry_role.arn
    image  = var.ferry_image
  }

  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    environment = {
      DEPLOY  = abspath("${path.module}/../deploy/base")
      ROLE    = module.ferry_role.arn
      IMAGE   = var.ferry_image
      CLUSTER = module.eks.name
      REGION  = var.region
    }
    command = <<-EOT
      set -euo pipefail
      overlay=$(mktemp -d)
      trap 'rm -rf "$overlay"' EXIT
      cat > "$overlay/kustomization.yaml" <<YAML
      apiVersion: kustomize.config.k8s.io/v1beta1
      kind: Kustomization
      resources: ["$DEPLOY"]
      images:
        - name: ghcr.io/ferry-dev/ferry
          newName: $${IMAGE%:*}
          newTag: $${IMAGE##*:}
      patches:
        - target: {kind: ServiceAccount, name: ferry}
          patch: |
            - op: replace
              path: /metadata/annotations/eks.amazonaws.com~1role-arn
              value: $ROLE
      YAML
      aws eks update-kubeconfig --name "$CLUSTER" --region "$REGION" --kubeconfig "$overlay/kubeconfig"
      KUBECONFIG="$overlay/kubeconfig" kubectl apply --server-side --field-manager=terraform -k "$overlay"
    EOT
  }

  depends_on = [kubernetes_manifest.cluster_prerequisites]
}
