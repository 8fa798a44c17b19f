output "arn" {
  description = "Bucket ARN."
  value       = aws_s3_bucket.this.arn
}

output "name" {
  description = "Bucket name."
  value       = aws_s3_bucket.this.id
}
