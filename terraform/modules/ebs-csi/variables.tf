variable "name" {
  description = "Name prefix of the driver's IAM role."
  type        = string
}

variable "cluster_name" {
  description = "The EKS cluster the add-on is installed into."
  type        = string
}

variable "oidc_provider_arn" {
  description = "The cluster's IAM OIDC provider."
  type        = string
}

variable "oidc_issuer" {
  description = "The OIDC issuer without https://."
  type        = string
}

variable "kms_key_arn" {
  description = "The CMK gp3 volumes are encrypted with."
  type        = string
}

variable "partition" {
  description = "The AWS partition (aws, aws-cn, aws-us-gov)."
  type        = string
}
