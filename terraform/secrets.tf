# The values of the platform's Kubernetes Secrets, kept in Secrets Manager
# under <name>/<namespace>/<secret> and encrypted with the platform key.
# The platform template declares each Secret with the annotation
# `ferry.dev/secrets-manager: <that id>` and no values; ferry fills them on
# every plan, so nobody runs `kubectl create secret` and a value put here
# reaches the cluster at ferry's next drift check.
#
# Generated values are Terraform's (and change only when tainted); the three
# GitHub issues are put by a person once (terraform/README, step 4).

resource "random_password" "database" {
  for_each = toset(["airflow", "mlflow"])
  length   = 40
  special  = false
}

resource "random_password" "secret" {
  for_each = toset(["airflow-jwt", "grafana-admin"])
  length   = 48
  special  = false
}

resource "random_id" "secret" {
  for_each    = toset(["fernet", "proxy-token", "cookie-secret", "crypt-key"])
  byte_length = 32
}

locals {
  database_host = module.rds.address
  # Kubernetes Secret (namespace/name) => its keys and values.
  generated_secrets = {
    "airflow/airflow-db" = {
      sql_alchemy_conn = "postgresql+psycopg2://airflow:${random_password.database["airflow"].result}@${local.database_host}:5432/airflow?sslmode=require"
    }
    "airflow/airflow-api" = {
      jwt_secret = random_password.secret["airflow-jwt"].result
      # Fernet takes 32 bytes in URL-safe base64.
      fernet_key = replace(replace(random_id.secret["fernet"].b64_std, "+", "-"), "/", "_")
    }
    # The database bootstrap's (the template's manifests/platform-db/).
    "platform-db/app-users" = {
      host    = local.database_host
      airflow = random_password.database["airflow"].result
      mlflow  = random_password.database["mlflow"].result
    }
    "mlflow/mlflow-db" = {
      uri = "postgresql+psycopg2://mlflow:${random_password.database["mlflow"].result}@${local.database_host}:5432/mlflow?sslmode=require"
    }
    "jupyterhub/jupyterhub-secrets" = {
      proxy-token   = random_id.secret["proxy-token"].hex
      cookie-secret = random_id.secret["cookie-secret"].hex
      # JupyterHub encrypts each user's GitHub token (auth_state) with it.
      crypt-key = random_id.secret["crypt-key"].hex
    }
    "monitoring/grafana-admin" = {
      password = random_password.secret["grafana-admin"].result
    }
  }
  # Issued by GitHub: Terraform makes the secret, a person puts its value
  # (a JSON object with these keys) and rotates it there.
  issued_secrets = {
    "airflow/airflow-github"       = ["token"]
    "jupyterhub/jupyterhub-github" = ["github-client-id", "github-client-secret"]
  }
}

resource "aws_secretsmanager_secret" "generated" {
  #checkov:skip=CKV2_AWS_57:No rotation Lambda: a new value is a reviewed Terraform change (replace its random_* resource); the database master, which RDS rotates itself, is not among these
  for_each                = local.generated_secrets
  name                    = "${var.name}/${each.key}"
  description             = "Kubernetes Secret ${each.key} (keys ${join(", ", sort(keys(each.value)))}); ferry fills it"
  kms_key_id              = aws_kms_key.platform.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "generated" {
  for_each      = local.generated_secrets
  secret_id     = aws_secretsmanager_secret.generated[each.key].id
  secret_string = jsonencode(each.value)
}

resource "aws_secretsmanager_secret" "issued" {
  #checkov:skip=CKV2_AWS_57:Issued and rotated at GitHub by a person, who then puts the new value here; no Lambda can issue a GitHub credential
  for_each                = local.issued_secrets
  name                    = "${var.name}/${each.key}"
  description             = "Kubernetes Secret ${each.key}: put a JSON object with keys ${join(", ", each.value)}; ferry fills it"
  kms_key_id              = aws_kms_key.platform.arn
  recovery_window_in_days = 7
}
