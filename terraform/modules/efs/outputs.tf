output "file_system_id" {
  description = "The DAGs file system."
  value       = aws_efs_file_system.this.id
}

output "persistent_volume" {
  description = "Name of the static PV ferry's and Airflow's claims bind to."
  value       = kubernetes_persistent_volume_v1.dags.metadata[0].name
}
