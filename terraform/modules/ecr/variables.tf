variable "name" {
  description = "Prefix of the repository names."
  type        = string
}

variable "repositories" {
  description = "Repository names (ferry, airflow-ml, mlflow-pyfunc, mlflow-server, notebook)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key encrypting the images."
  type        = string
}
