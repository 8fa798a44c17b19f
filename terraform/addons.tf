# Cluster add-ons that need what ferry's ClusterRole deliberately lacks
# (ClusterRoles, APIServices, host paths): the Cluster Autoscaler, the NVIDIA
# device plugin and metrics-server, from templates/cluster-addons.yaml.tftpl,
# which ferry's stand-up test renders and applies too. The rule for where
# an add-on lives is in README.md ("Cluster add-ons").

# The Cluster Autoscaler: reads every Auto Scaling group and the managed
# nodegroups (labels and taints of a group at zero), and changes only the
# groups EKS tagged as this cluster's.
module "cluster_autoscaler_role" {
  source            = "./modules/irsa"
  name              = "${var.name}-cluster-autoscaler"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer       = module.eks.oidc_issuer
  namespace         = "kube-system"
  service_accounts  = ["cluster-autoscaler"]
  policy_json = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid    = "DescribeGroupsAndInstanceTypes"
        Effect = "Allow"
        Action = [
          "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances",
          "autoscaling:DescribeLaunchConfigurations", "autoscaling:DescribeScalingActivities",
          "autoscaling:DescribeTags", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
          "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceTypesFromInstanceRequirements",
        ]
        # Describe calls have no resource-level permissions.
        Resource = ["*"]
      },
      {
        Sid      = "DescribeThisClustersNodegroups"
        Effect   = "Allow"
        Action   = ["eks:DescribeNodegroup"]
        Resource = ["${local.eks_prefix}:nodegroup/${var.name}/*/*"]
      },
      {
        Sid      = "ScaleOnlyThisClustersGroups"
        Effect   = "Allow"
        Action   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
        Resource = ["*"]
        # EKS tags every managed nodegroup's Auto Scaling group so.
        Condition = {
          StringEquals = { "aws:ResourceTag/k8s.io/cluster-autoscaler/${var.name}" = "owned" }
        }
      },
    ]
  })
}

locals {
  cluster_addons = templatefile("${path.module}/templates/cluster-addons.yaml.tftpl", {
    cluster_name                = module.eks.name
    region                      = var.region
    cluster_autoscaler_role_arn = module.cluster_autoscaler_role.arn
    cluster_autoscaler_version  = var.cluster_autoscaler_version
  })
  cluster_addon_objects = {
    for doc in [for text in split("\n---\n", local.cluster_addons) : yamldecode(text)] :
    "${doc.kind}/${try(doc.metadata.namespace, "")}/${doc.metadata.name}" => doc
  }
}

resource "kubernetes_manifest" "cluster_addons" {
  for_each = local.cluster_addon_objects
  manifest = each.value

  field_manager {
    name = "terraform"
  }

  depends_on = [kubernetes_manifest.cluster_prerequisites]
}
