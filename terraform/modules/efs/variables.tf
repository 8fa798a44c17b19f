variable "name" {
  description = "Prefix of resource names."
  type        = string
}

variable "vpc_id" {
  description = "The VPC of the mount targets."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, one mount target each."
  type        = list(string)
}

variable "node_security_group_id" {
  description = "Security group of the EKS nodes (allowed to mount)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the file system."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster that gets the EFS CSI driver addon."
  type        = string
}

variable "oidc_provider_arn" {
  description = "The cluster's IAM OIDC provider (IRSA for the CSI driver)."
  type        = string
}

variable "oidc_issuer" {
  description = "The OIDC issuer without https://."
  type        = string
}
