# In the cluster, before ferry: the StorageClasses and the DAGs volume's
# static PVs, from templates/cluster-prerequisites.yaml.tftpl (which
# ferry's stand-up test renders and applies too), with server-side apply.
module "ebs_csi" {
  source            = "./modules/ebs-csi"
  name              = var.name
  cluster_name      = module.eks.name
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer       = module.eks.oidc_issuer
  kms_key_arn       = aws_kms_key.platform.arn
  partition         = local.partition
}

locals {
  cluster_prerequisites = templatefile("${path.module}/templates/cluster-prerequisites.yaml.tftpl", {
    name                = var.name
    kms_key_arn         = aws_kms_key.platform.arn
    efs_file_system_id  = module.efs.file_system_id
    efs_access_point_id = module.efs.access_point_id
  })
  cluster_prerequisite_objects = {
    for doc in [for text in split("\n---\n", local.cluster_prerequisites) : yamldecode(text)] :
    "${doc.kind}/${doc.metadata.name}" => doc
  }
}

resource "kubernetes_manifest" "cluster_prerequisites" {
  for_each = local.cluster_prerequisite_objects
  manifest = each.value

  field_manager {
    name = "terraform"
  }

  depends_on = [module.efs, module.ebs_csi]
}
