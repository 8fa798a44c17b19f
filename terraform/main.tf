data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  gpu = var.gpu_nodegroup ? {
    gpu = {
      instance_types = ["g5.xlarge"]
      min_size       = 0
      max_size       = 4
      desired_size   = 0
      labels         = { role = "gpu-training" }
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
    }
  } : {}
  nodegroups = {
    for name, ng in merge(var.nodegroups, local.gpu) : name => merge(ng, {
      ami_type = name == "gpu" ? "AL2023_x86_64_NVIDIA" : "AL2023_x86_64_STANDARD"
    })
  }
}

# One customer-managed key for the platform's data at rest.
resource "aws_kms_key" "platform" {
  description         = "${var.name}: EKS secrets, EFS, RDS, S3, ECR, logs"
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsEncrypt"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.region}.amazonaws.com" }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
        Resource  = "*"
      },
    ]
  })
}

resource "aws_kms_alias" "platform" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.platform.key_id
}

module "network" {
  source             = "./modules/network"
  name               = var.name
  cidr               = var.vpc_cidr
  zones              = var.availability_zones
  kms_key_arn        = aws_kms_key.platform.arn
  single_nat_gateway = var.single_nat_gateway

  interface_endpoints = var.vpc_interface_endpoints
}

module "eks" {
  source             = "./modules/eks"
  name               = var.name
  kubernetes_version = var.kubernetes_version
  subnet_ids         = module.network.private_subnet_ids
  kms_key_arn        = aws_kms_key.platform.arn
  nodegroups         = local.nodegroups

  public_access_cidrs  = var.public_access_cidrs
  admin_role_arns      = concat(var.admin_role_arns, local.ci_apply_role_arns)
  viewer_role_arns     = local.ci_plan_role_arns
  log_retention_days   = var.log_retention_days
  node_root_volume_gib = var.node_root_volume_gib
}

module "efs" {
  source                 = "./modules/efs"
  name                   = var.name
  vpc_id                 = module.network.vpc_id
  subnet_ids             = module.network.private_subnet_ids
  node_security_group_id = module.eks.cluster_security_group_id
  kms_key_arn            = aws_kms_key.platform.arn
  cluster_name           = module.eks.name
  oidc_provider_arn      = module.eks.oidc_provider_arn
  oidc_issuer            = module.eks.oidc_issuer
}

module "rds" {
  source                 = "./modules/rds"
  name                   = "${var.name}-metadata"
  vpc_id                 = module.network.vpc_id
  subnet_ids             = var.database_subnets ? module.network.database_subnet_ids : module.network.private_subnet_ids
  node_security_group_id = module.eks.cluster_security_group_id
  instance_class         = var.db_instance_class
  kms_key_arn            = aws_kms_key.platform.arn
}

# Server access logs of the data buckets land here (S3 log delivery writes
# with SSE-S3 only).
resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_145:S3 server access log delivery supports only SSE-S3 on the target bucket
  bucket = "${var.name}-access-logs"
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    id     = "expire-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = 365
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

module "bucket" {
  source            = "./modules/bucket"
  for_each          = toset(["mlflow-artifacts", "airflow-logs", "models", "data-capture"])
  name              = "${var.name}-${each.key}"
  kms_key_arn       = aws_kms_key.platform.arn
  access_log_bucket = aws_s3_bucket.access_logs.id
}

module "ecr" {
  source       = "./modules/ecr"
  name         = var.name
  repositories = ["ferry", "airflow-ml", "mlflow-pyfunc", "mlflow-server", "notebook"]
  kms_key_arn  = aws_kms_key.platform.arn
}
