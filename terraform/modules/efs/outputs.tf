output "file_system_id" {
  description = "The DAGs file system."
  value       = aws_efs_file_system.this.id
}

output "access_point_id" {
  description = "The access point every DAGs claim mounts (uid 65532, gid 0, /dags)."
  value       = aws_efs_access_point.dags.id
}
