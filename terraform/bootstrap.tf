# ferry itself, from deploy/ (deploy/bootstrap.sh): deploy/base with the
# IRSA role and the image set, server-side; deploy/monitoring once the
# cluster serves the Prometheus operator's kinds. From here on ferry keeps
# the platform in sync.
resource "terraform_data" "ferry" {
  count = var.bootstrap_ferry ? 1 : 0

  triggers_replace = {
    deploy = sha256(join("", [for f in sort(fileset("${path.module}/../deploy", "**")) : filesha256("${path.module}/../deploy/${f}")]))
    role   = module.ferry_role.arn
    image  = var.ferry_image
  }

  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    environment = {
      BOOTSTRAP = abspath("${path.module}/../deploy/bootstrap.sh")
      ROLE      = module.ferry_role.arn
      IMAGE     = var.ferry_image
      CLUSTER   = module.eks.name
      REGION    = var.region
    }
    command = <<-EOT
      set -euo pipefail
      kubeconfig=$(mktemp)
      trap 'rm -f "$kubeconfig"' EXIT
      aws eks update-kubeconfig --name "$CLUSTER" --region "$REGION" --kubeconfig "$kubeconfig"
      KUBECONFIG="$kubeconfig" "$BOOTSTRAP"
    EOT
  }

  depends_on = [kubernetes_manifest.cluster_prerequisites]
}
