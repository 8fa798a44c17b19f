output "role_arn" {
  description = "IRSA role of the driver's controller."
  value       = module.role.arn
}
