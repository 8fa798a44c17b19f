# The EBS CSI driver, which makes the volumes of the gp3 StorageClass
# (Prometheus' TSDB, the JupyterHub hub database and user homes): the EKS
# add-on with its own IRSA role. The StorageClass itself is in
# ../../templates/cluster-prerequisites.yaml.tftpl.
module "role" {
  source            = "../irsa"
  name              = "${var.name}-ebs-csi"
  oidc_provider_arn = var.oidc_provider_arn
  oidc_issuer       = var.oidc_issuer
  namespace         = "kube-system"
  service_accounts  = ["ebs-csi-controller-sa"]
  # AWS maintains the EC2 permissions the driver needs; what is added here
  # is the platform CMK, which gp3 volumes are encrypted with.
  managed_policy_arns = ["arn:${var.partition}:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"]
  policy_json = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"]
        Resource = [var.kms_key_arn]
        Condition = {
          Bool = { "kms:GrantIsForAWSResource" = "true" }
        }
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
        Resource = [var.kms_key_arn]
      },
    ]
  })
}

resource "aws_eks_addon" "this" {
  cluster_name             = var.cluster_name
  addon_name               = "aws-ebs-csi-driver"
  service_account_role_arn = module.role.arn
}
