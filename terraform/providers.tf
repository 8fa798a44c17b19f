provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, { "ml-platform" = var.name })
  }
}

# For the StorageClass, the DAGs volume and ferry's bootstrap; the cluster
# must exist first (see README: apply order).
provider "kubernetes" {
  host                   = module.eks.endpoint
  cluster_ca_certificate = base64decode(module.eks.certificate_authority)
  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.eks.name, "--region", var.region]
  }
}
