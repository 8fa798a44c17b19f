variable "name" {
  description = "Bucket name."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for default encryption."
  type        = string
}

variable "access_log_bucket" {
  description = "Bucket receiving the server access logs."
  type        = string
}

variable "noncurrent_days" {
  description = "Days a replaced object version is kept."
  type        = number
  default     = 90
}
