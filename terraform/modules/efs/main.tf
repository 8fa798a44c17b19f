# The RWX volume ferry publishes the DAGs into and Airflow reads: EFS,
# encrypted, reachable only from the cluster's nodes, with its CSI driver
# and the access point every DAGs claim mounts. The StorageClass and the
# static PVs (one per claim, all on this access point) are in
# ../../templates/cluster-prerequisites.yaml.tftpl.
resource "aws_efs_file_system" "this" {
  creation_token   = "${var.name}-dags"
  encrypted        = true
  kms_key_id       = var.kms_key_arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"
  tags             = { Name = "${var.name}-dags" }
}

resource "aws_efs_backup_policy" "this" {
  file_system_id = aws_efs_file_system.this.id
  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_security_group" "efs" {
  name        = "${var.name}-efs"
  description = "NFS from the EKS nodes to the DAGs file system"
  vpc_id      = var.vpc_id

  ingress {
    description     = "NFS from the cluster's nodes"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [var.node_security_group_id]
  }
}

resource "aws_efs_mount_target" "this" {
  count           = length(var.subnet_ids)
  file_system_id  = aws_efs_file_system.this.id
  subnet_id       = var.subnet_ids[count.index]
  security_groups = [aws_security_group.efs.id]
}

# Airflow runs as uid 50000 gid 0; ferry as 65532 with fsGroup 0: the
# access point makes every file group 0 and group-writable.
resource "aws_efs_access_point" "dags" {
  file_system_id = aws_efs_file_system.this.id
  posix_user {
    uid = 65532
    gid = 0
  }
  root_directory {
    path = "/dags"
    creation_info {
      owner_uid   = 65532
      owner_gid   = 0
      permissions = "0775"
    }
  }
}

module "csi_role" {
  source            = "../irsa"
  name              = "${var.name}-efs-csi"
  oidc_provider_arn = var.oidc_provider_arn
  oidc_issuer       = var.oidc_issuer
  namespace         = "kube-system"
  service_accounts  = ["efs-csi-controller-sa"]
  policy_json = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["elasticfilesystem:DescribeAccessPoints", "elasticfilesystem:DescribeFileSystems", "elasticfilesystem:DescribeMountTargets"]
        Resource = [aws_efs_file_system.this.arn, "arn:aws:elasticfilesystem:*:*:access-point/*"]
      },
      {
        Effect   = "Allow"
        Action   = ["elasticfilesystem:CreateAccessPoint", "elasticfilesystem:DeleteAccessPoint", "elasticfilesystem:TagResource"]
        Resource = [aws_efs_file_system.this.arn, "arn:aws:elasticfilesystem:*:*:access-point/*"]
      },
    ]
  })
}

resource "aws_eks_addon" "efs_csi" {
  cluster_name             = var.cluster_name
  addon_name               = "aws-efs-csi-driver"
  service_account_role_arn = module.csi_role.arn
}
