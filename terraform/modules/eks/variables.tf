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
