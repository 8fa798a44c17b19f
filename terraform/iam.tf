# Roles of the platform's workloads (IRSA) and of SageMaker endpoints.

locals {
  eks_prefix       = "arn:${local.partition}:eks:${var.region}:${local.account}"
  sagemaker_prefix = "arn:${local.partition}:sagemaker:${var.region}:${local.account}"
  kms_use = {
    Effect   = "Allow"
    Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
    Resource = [aws_kms_key.platform.arn]
  }
}

# ferry: EKS nodegroups and addons of its one cluster; SageMaker resources it
# tags as managed, their smoke tests and variant autoscaling; the platform's
# Secret values; PassRole for the SageMaker execution role only.
module "ferry_role" {
  source            = "./modules/irsa"
  name              = "${var.name}-ferry"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer       = module.eks.oidc_issuer
  namespace         = "ferry"
  service_accounts  = ["ferry"]
  policy_json = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid    = "EksNodegroupsAndAddons"
        Effect = "Allow"
        Action = [
          "eks:DescribeCluster", "eks:ListNodegroups", "eks:DescribeNodegroup", "eks:UpdateNodegroupConfig",
          "eks:UpdateNodegroupVersion", "eks:DescribeUpdate", "eks:ListAddons", "eks:DescribeAddon",
          "eks:CreateAddon", "eks:UpdateAddon",
        ]
        Resource = [
          module.eks.arn,
          "${local.eks_prefix}:nodegroup/${module.eks.name}/*/*",
          "${local.eks_prefix}:addon/${module.eks.name}/*/*",
        ]
      },
      {
        Sid    = "SageMakerRead"
        Effect = "Allow"
        Action = [
          "sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig", "sagemaker:DescribeModel",
          "sagemaker:ListEndpoints", "sagemaker:ListEndpointConfigs", "sagemaker:ListModels", "sagemaker:ListTags",
        ]
        Resource = "*"
      },
      {
        Sid      = "SageMakerCreateTagged"
        Effect   = "Allow"
        Action   = ["sagemaker:CreateModel", "sagemaker:CreateEndpointConfig", "sagemaker:CreateEndpoint", "sagemaker:AddTags"]
        Resource = ["${local.sagemaker_prefix}:model/*", "${local.sagemaker_prefix}:endpoint-config/*", "${local.sagemaker_prefix}:endpoint/*"]
        Condition = {
          StringEquals = { "aws:RequestTag/ferry.dev/managed" = "true" }
        }
      },
      {
        Sid    = "SageMakerChangeManaged"
        Effect = "Allow"
        Action = [
          "sagemaker:UpdateEndpoint", "sagemaker:UpdateEndpointWeightsAndCapacities", "sagemaker:DeleteEndpoint",
          "sagemaker:DeleteEndpointConfig", "sagemaker:DeleteModel",
        ]
        Resource = ["${local.sagemaker_prefix}:model/*", "${local.sagemaker_prefix}:endpoint-config/*", "${local.sagemaker_prefix}:endpoint/*"]
        Condition = {
          StringEquals = { "aws:ResourceTag/ferry.dev/managed" = "true" }
        }
      },
      {
        # The smoke test of platform.yaml's `smoke_test`: only endpoints
        # ferry manages.
        Sid       = "SageMakerSmokeTestManaged"
        Effect    = "Allow"
        Action    = ["sagemaker:InvokeEndpoint"]
        Resource  = ["${local.sagemaker_prefix}:endpoint/*"]
        Condition = { StringEquals = { "aws:ResourceTag/ferry.dev/managed" = "true" } }
      },
      {
        # A variant's `autoscaling` block: Application Auto Scaling targets
        # and target-tracking policies. Its actions take no resource ARN
        # before the target exists, so the namespace and dimension are the scope.
        Sid    = "SageMakerVariantAutoscaling"
        Effect = "Allow"
        Action = [
          "application-autoscaling:RegisterScalableTarget", "application-autoscaling:DeregisterScalableTarget",
          "application-autoscaling:PutScalingPolicy", "application-autoscaling:DeleteScalingPolicy",
        ]
        Resource = "*"
        Condition = {
          StringEquals = {
            "application-autoscaling:service-namespace"  = "sagemaker"
            "application-autoscaling:scalable-dimension" = "sagemaker:variant:DesiredInstanceCount"
          }
        }
      },
      {
        Sid    = "AutoscalingRead"
        Effect = "Allow"
        Action = [
          "application-autoscaling:DescribeScalableTargets", "application-autoscaling:DescribeScalingPolicies",
          "cloudwatch:DescribeAlarms",
        ]
        Resource = "*"
      },
      {
        # A target-tracking policy is carried out by CloudWatch alarms that
        # Application Auto Scaling names TargetTracking-endpoint/<endpoint>/...
        Sid      = "TargetTrackingAlarms"
        Effect   = "Allow"
        Action   = ["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"]
        Resource = ["arn:${local.partition}:cloudwatch:${var.region}:${local.account}:alarm:TargetTracking-endpoint/*"]
      },
      {
        # The first target registered in an account creates the role
        # Application Auto Scaling scales SageMaker variants with.
        Sid       = "AutoscalingServiceLinkedRole"
        Effect    = "Allow"
        Action    = "iam:CreateServiceLinkedRole"
        Resource  = "arn:${local.partition}:iam::${local.account}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
        Condition = { StringLike = { "iam:AWSServiceName" = "sagemaker.application-autoscaling.amazonaws.com" } }
      },
      {
        # The values of the platform's Secrets (secrets.tf) and the
        # database's master credentials, which RDS keeps and rotates.
        Sid    = "PlatformSecretsRead"
        Effect = "Allow"
        Action = "secretsmanager:GetSecretValue"
        Resource = concat(
          [for s in aws_secretsmanager_secret.generated : s.arn],
          [for s in aws_secretsmanager_secret.issued : s.arn],
          [module.rds.master_user_secret_arn],
        )
      },
      {
        Sid       = "DecryptThroughSecretsManagerOnly"
        Effect    = "Allow"
        Action    = "kms:Decrypt"
        Resource  = aws_kms_key.platform.arn
        Condition = { StringEquals = { "kms:ViaService" = "secretsmanager.${var.region}.amazonaws.com" } }
      },
      {
        Sid      = "PassTheExecutionRoleToSageMaker"
        Effect   = "Allow"
        Action   = "iam:PassRole"
        Resource = aws_iam_role.sagemaker_execution.arn
        Condition = {
          StringEquals = { "iam:PassedToService" = "sagemaker.amazonaws.com" }
        }
      },
    ]
  })
}

module "airflow_role" {
  source            = "./modules/irsa"
  name              = "${var.name}-airflow"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer       = module.eks.oidc_issuer
  namespace         = "airflow"
  # The components read task logs (api-server), task pods write them.
  service_accounts = ["airflow", "airflow-worker"]
  policy_json = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "TaskLogs"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
        Resource = [module.bucket["airflow-logs"].arn, "${module.bucket["airflow-logs"].arn}/*"]
      },
      {
        Sid      = "PackagedModels"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
        Resource = [module.bucket["models"].arn, "${module.bucket["models"].arn}/*"]
      },
      local.kms_use,
    ]
  })
}

module "mlflow_role" {
  source            = "./modules/irsa"
  name              = "${var.name}-mlflow"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer       = module.eks.oidc_issuer
  namespace         = "mlflow"
  service_accounts  = ["mlflow"]
  policy_json = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "Artifacts"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]
        Resource = [module.bucket["mlflow-artifacts"].arn, "${module.bucket["mlflow-artifacts"].arn}/*"]
      },
      local.kms_use,
    ]
  })
}

# What a SageMaker endpoint runs as: read the model artifacts and pull the
# serving image, write captured data and logs.
resource "aws_iam_role" "sagemaker_execution" {
  name = "${var.name}-sagemaker-exec"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "sagemaker.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "sagemaker_execution" {
  name = "serve-models"
  role = aws_iam_role.sagemaker_execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ReadModels"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:ListBucket"]
        Resource = [module.bucket["models"].arn, "${module.bucket["models"].arn}/*", module.bucket["mlflow-artifacts"].arn, "${module.bucket["mlflow-artifacts"].arn}/*"]
      },
      {
        Sid      = "CaptureData"
        Effect   = "Allow"
        Action   = ["s3:PutObject"]
        Resource = ["${module.bucket["data-capture"].arn}/*"]
      },
      {
        Sid      = "PullServingImage"
        Effect   = "Allow"
        Action   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
        Resource = [module.ecr.arns["mlflow-pyfunc"]]
      },
      {
        Sid      = "EcrLogin"
        Effect   = "Allow"
        Action   = ["ecr:GetAuthorizationToken"]
        Resource = "*"
      },
      {
        Sid      = "Logs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = ["arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/aws/sagemaker/*"]
      },
      {
        Sid       = "Metrics"
        Effect    = "Allow"
        Action    = ["cloudwatch:PutMetricData"]
        Resource  = "*"
        Condition = { StringEquals = { "cloudwatch:namespace" = "/aws/sagemaker/Endpoints" } }
      },
      local.kms_use,
    ]
  })
}
