variable "name" {
  description = "Role name."
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

variable "namespace" {
  description = "Namespace of the service account."
  type        = string
}

variable "service_accounts" {
  description = "Names of the service accounts (in namespace) allowed to assume the role: exactly those annotated with it."
  type        = list(string)
}

variable "policy_json" {
  description = "The role's permissions (an IAM policy document)."
  type        = string
}

variable "managed_policy_arns" {
  description = "AWS managed policies attached besides policy_json."
  type        = list(string)
  default     = []
}
