# Roles GitHub Actions assume by OIDC, no stored keys, each trusting one
# repository and one kind of run (the token's `sub`):
#   images: the platform repository's images.yml on main pushes the images
#           the platform runs (only those ECR repositories);
#   plan:   this directory's own workflow (.github/workflows/terraform.yml,
#           with this directory as the repository root) on pull requests,
#           read-only;
#   apply:  the same workflow on main in the GitHub environment
#           `production` (give it required reviewers).
# Each exists once its repository variable is set. The first apply, which
# creates them, is a person's (README "Apply order").

resource "aws_iam_openid_connect_provider" "github" {
  count          = length(local.github_roles) > 0 && var.github_oidc_provider_arn == "" ? 1 : 0
  url            = "https://token.actions.githubusercontent.com"
  client_id_list = ["sts.amazonaws.com"]
  tags           = var.tags
}

locals {
  github_oidc_provider_arn = var.github_oidc_provider_arn != "" ? var.github_oidc_provider_arn : try(aws_iam_openid_connect_provider.github[0].arn, "")
  ci                       = var.infra_repository != ""
  github_roles = merge(
    var.platform_repository == "" ? {} : {
      images = { name = "${var.name}-images", sub = "repo:${var.platform_repository}:ref:refs/heads/main" }
    },
    local.ci ? {
      plan  = { name = "${var.name}-terraform-plan", sub = "repo:${var.infra_repository}:pull_request" }
      apply = { name = "${var.name}-terraform-apply", sub = "repo:${var.infra_repository}:environment:production" }
    } : {},
  )
  # Known at plan time (the cluster's access entries are keyed by them).
  ci_role_prefix     = "arn:${local.partition}:iam::${local.account}:role"
  ci_plan_role_arns  = local.ci ? ["${local.ci_role_prefix}/${var.name}-terraform-plan"] : []
  ci_apply_role_arns = local.ci ? ["${local.ci_role_prefix}/${var.name}-terraform-apply"] : []
}

resource "aws_iam_role" "github" {
  for_each = local.github_roles
  name     = each.value.name
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRoleWithWebIdentity"
      Principal = { Federated = local.github_oidc_provider_arn }
      Condition = {
        StringEquals = {
          "token.actions.githubusercontent.com:aud" = "sts.amazonaws.com"
          "token.actions.githubusercontent.com:sub" = each.value.sub
        }
      }
    }]
  })
  max_session_duration = 3600
  tags                 = var.tags
}

resource "aws_iam_role_policy" "images" {
  count = var.platform_repository != "" ? 1 : 0
  name  = "push-platform-images"
  role  = aws_iam_role.github["images"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid    = "PushPlatformImages"
        Effect = "Allow"
        Action = [
          "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
          "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:DescribeImages",
          "ecr:GetDownloadUrlForLayer",
        ]
        Resource = [for r in ["mlflow-pyfunc", "mlflow-server", "airflow-ml", "notebook"] : module.ecr.arns[r]]
      },
      {
        # Registry-wide by AWS's design: it scopes nothing.
        Sid      = "RegistryLogin"
        Effect   = "Allow"
        Action   = "ecr:GetAuthorizationToken"
        Resource = "*"
      },
    ]
  })
}

# plan reads everything it refreshes, and takes the state's lock file.
resource "aws_iam_role_policy_attachment" "terraform_plan_read" {
  count      = local.ci ? 1 : 0
  role       = aws_iam_role.github["plan"].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/ReadOnlyAccess"
}

resource "aws_iam_role_policy" "terraform_plan_state" {
  count = local.ci ? 1 : 0
  name  = "state-lock"
  role  = aws_iam_role.github["plan"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "StateLockFile"
      Effect   = "Allow"
      Action   = ["s3:PutObject", "s3:DeleteObject"]
      Resource = ["arn:${local.partition}:s3:::${var.state_bucket}/${var.state_key}.tflock"]
    }]
  })
}

# apply manages IAM, KMS, EKS, VPC, RDS: a policy narrower than
# administrator is each team's to write; what guards it is the
# `production` environment's required reviewers and the trust above.
resource "aws_iam_role_policy_attachment" "terraform_apply_admin" {
  count      = local.ci ? 1 : 0
  role       = aws_iam_role.github["apply"].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AdministratorAccess"
}
