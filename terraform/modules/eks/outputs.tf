output "name" {
  description = "Cluster name."
  value       = aws_eks_cluster.this.name
}

output "arn" {
  description = "Cluster ARN."
  value       = aws_eks_cluster.this.arn
}

output "endpoint" {
  description = "Kubernetes API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "certificate_authority" {
  description = "Cluster CA certificate (base64)."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "oidc_provider_arn" {
  description = "IAM OIDC provider for IRSA."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "oidc_issuer" {
  description = "OIDC issuer host/path, for IRSA trust conditions."
  value       = replace(aws_iam_openid_connect_provider.this.url, "https://", "")
}

output "cluster_security_group_id" {
  description = "Security group EKS attaches to nodes and the control plane."
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}
