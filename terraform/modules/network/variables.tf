variable "name" {
  description = "Prefix of the network's resource names."
  type        = string
}

variable "cidr" {
  description = "VPC CIDR block."
  type        = string
}

variable "zones" {
  description = "Availability zones, one public, one private and one database subnet each."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the flow log group."
  type        = string
}

variable "single_nat_gateway" {
  description = "One NAT gateway shared by every zone (non-production) instead of one per zone."
  type        = bool
}

variable "interface_endpoints" {
  description = "AWS services reached through interface VPC endpoints (com.amazonaws.<region>.<service>)."
  type        = list(string)
}
