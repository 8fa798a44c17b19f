output "cluster_name" {
  description = "EKS cluster (platform.yaml: eks.cluster.name)."
  value       = module.eks.name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint (private)."
  value       = module.eks.endpoint
}

output "ferry_role_arn" {
  description = "IRSA role of ferry's ServiceAccount."
  value       = module.ferry_role.arn
}

output "airflow_role_arn" {
  description = "IRSA role of Airflow's task pods."
  value       = module.airflow_role.arn
}

output "mlflow_role_arn" {
  description = "IRSA role of the MLflow server."
  value       = module.mlflow_role.arn
}

output "sagemaker_execution_role_arn" {
  description = "platform.yaml: sagemaker.endpoints[].execution_role_arn."
  value       = aws_iam_role.sagemaker_execution.arn
}

output "buckets" {
  description = "Bucket names (mlflow-artifacts, airflow-logs, models, data-capture)."
  value       = { for k, b in module.bucket : k => b.name }
}

output "ecr_repositories" {
  description = "ECR repository URLs (ferry, airflow-ml, mlflow-pyfunc, mlflow-server, notebook)."
  value       = module.ecr.urls
}

output "postgres_endpoint" {
  description = "host:port of the metadata database."
  value       = module.rds.endpoint
}

output "postgres_master_secret_arn" {
  description = "Secrets Manager ARN of the database master credentials."
  value       = module.rds.master_user_secret_arn
}

output "dags_file_system_id" {
  description = "EFS file system of the DAGs volume."
  value       = module.efs.file_system_id
}

output "dags_persistent_volumes" {
  description = "The static PVs of the DAGs volume, one per claim (the claims' volumeName), all on one EFS access point."
  value       = sort([for key, doc in local.cluster_prerequisite_objects : doc.metadata.name if doc.kind == "PersistentVolume"])
}

output "images_role_arn" {
  description = "Role the platform repository's images workflow assumes (repository variable IMAGES_ROLE_ARN); null without platform_repository."
  value       = try(aws_iam_role.github["images"].arn, null)
}

output "terraform_role_arns" {
  description = "Roles of the infra repository's workflow (its PLAN_ROLE_ARN and APPLY_ROLE_ARN); empty without infra_repository."
  value       = { for k, r in aws_iam_role.github : k => r.arn if k != "images" }
}
