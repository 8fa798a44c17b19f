variable "name" {
  description = "Prefix of the network's resource names."
  type        = string
}

variable "cidr" {
  description = "VPC CIDR block."
  type        = string
}

variable "zones" {
  description = "Availability zones, one public and one private subnet each."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the flow log group."
  type        = string
}
