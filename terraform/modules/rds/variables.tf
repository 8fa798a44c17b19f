variable "name" {
  description = "Instance identifier and prefix of related resources."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the DB subnet group."
  type        = list(string)
}

variable "node_security_group_id" {
  description = "Security group of the EKS nodes (allowed to connect)."
  type        = string
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for storage and Performance Insights."
  type        = string
}
