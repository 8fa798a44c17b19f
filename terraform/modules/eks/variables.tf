variable "name" {
  description = "Cluster name."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes version of the control plane."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the control plane ENIs and the nodes."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key for envelope encryption of Kubernetes Secrets."
  type        = string
}

variable "nodegroups" {
  description = "Managed nodegroups by name (sizes, instance types, labels, taints, AMI type)."
  type = map(object({
    instance_types = list(string)
    ami_type       = string
    min_size       = number
    max_size       = number
    desired_size   = number
    labels         = map(string)
    taints = list(object({
      key    = string
      value  = string
      effect = string
    }))
  }))
}

variable "public_access_cidrs" {
  description = "CIDRs that may reach the API endpoint over the internet; empty keeps the endpoint private."
  type        = list(string)
}

variable "admin_role_arns" {
  description = "IAM roles given cluster admin by access entry (people's role, the CI role running Terraform)."
  type        = list(string)
}

variable "viewer_role_arns" {
  description = "IAM roles given read-only cluster access by access entry (the CI role that plans)."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "Days the control plane's logs are kept."
  type        = number
}

variable "node_root_volume_gib" {
  description = "Size of each node's root volume (GiB)."
  type        = number
}
