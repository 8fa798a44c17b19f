# ferry itself, from the deploy/ directory of the ferry release you run
# (var.ferry_deploy_dir; deploy/bootstrap.sh): deploy/base with the IRSA role
# and the image set, server-side; deploy/monitoring once the cluster serves
# the Prometheus operator's kinds. From here on ferry keeps the platform in
# sync.
locals {
  ferry_deploy = abspath("${path.module}/${var.ferry_deploy_dir}")
}

resource "terraform_data" "ferry" {
  count = var.bootstrap_ferry ? 1 : 0

  triggers_replace = {
    deploy = sha256(join("", [for f in sort(fileset(local.ferry_deploy, "**")) : filesha256("${local.ferry_deploy}/${f}")]))
    role   = module.ferry_role.arn
    image  = var.ferry_image
  }

  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    environment = {
      BOOTSTRAP = "${local.ferry_deploy}/bootstrap.sh"
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
