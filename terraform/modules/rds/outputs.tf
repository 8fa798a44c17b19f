output "endpoint" {
  description = "host:port of the Postgres instance."
  value       = aws_db_instance.this.endpoint
}

output "master_user_secret_arn" {
  description = "Secrets Manager secret holding the master credentials (for External Secrets)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}
