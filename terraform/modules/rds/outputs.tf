output "endpoint" {
  description = "host:port of the Postgres instance."
  value       = aws_db_instance.this.endpoint
}

output "master_user_secret_arn" {
  description = "Secrets Manager secret holding the master credentials (ferry fills the database bootstrap's Secret from it)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "address" {
  description = "Host name of the Postgres instance."
  value       = aws_db_instance.this.address
}
