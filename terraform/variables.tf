variable "name" {
  description = "Name of the platform: prefix of every resource (cluster, buckets, roles)."
  type        = string
  default     = "ml-platform"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}$", var.name))
    error_message = "name must be 3-31 characters of a-z, 0-9 and -, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the whole platform."
  type        = string
  default     = "eu-west-1"
  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "vpc_cidr" {
  description = "CIDR block of the platform's VPC; split into public and private subnets per zone."
  type        = string
  default     = "10.40.0.0/16"
  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a valid IPv4 CIDR of /20 or larger."
  }
}

variable "availability_zones" {
  description = "Zones to spread subnets and nodes over (at least two, for EKS and RDS)."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  validation {
    condition     = length(var.availability_zones) >= 2
    error_message = "at least two availability zones are needed."
  }
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to reach the EKS API endpoint over the internet (an office, a VPN egress). Empty (the default): the endpoint is private, reached from inside the VPC only (see README, Access)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for c in var.public_access_cidrs : can(cidrnetmask(c)) && c != "0.0.0.0/0"])
    error_message = "public_access_cidrs must be IPv4 CIDRs, and not 0.0.0.0/0 (leave it empty for a private endpoint)."
  }
}

variable "admin_role_arns" {
  description = "IAM role ARNs given cluster admin by EKS access entry: the role people assume (and a CI role of your own, if not the one infra_repository makes, which is added by itself: its Kubernetes resources and ferry's bootstrap need the API). The creator of the cluster gets nothing implicitly."
  type        = list(string)
  validation {
    condition     = length(var.admin_role_arns) > 0 && alltrue([for a in var.admin_role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", a))])
    error_message = "admin_role_arns needs at least one IAM role ARN (arn:aws:iam::123456789012:role/NAME): without one nobody can reach the cluster."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones instead of one per zone: cheaper, for non-production; a zone outage then cuts every private subnet off the internet (the VPC endpoints still serve ECR, S3, STS, logs and SageMaker runtime)."
  type        = bool
  default     = false
}

variable "database_subnets" {
  description = "Put RDS in the database subnets, which have no route out of the VPC. An instance created before they existed cannot move subnets in place: set false to keep it in the private subnets (or snapshot and restore it into the new ones)."
  type        = bool
  default     = true
}

variable "vpc_interface_endpoints" {
  description = "AWS services the private subnets reach by interface VPC endpoint rather than through NAT: image pulls (ecr.api, ecr.dkr; layers come from S3, which has a free gateway endpoint), IRSA (sts), logs, model invocations (sagemaker.runtime), the EFS CSI driver (elasticfilesystem). Each costs an hourly fee per zone; trim for a small setup."
  type        = list(string)
  default     = ["ecr.api", "ecr.dkr", "sts", "logs", "sagemaker.runtime", "elasticfilesystem"]
}

variable "log_retention_days" {
  description = "Days the EKS control plane's logs (api, audit, authenticator, controllerManager, scheduler) are kept, encrypted with the platform key."
  type        = number
  default     = 365
  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653)."
  }
}

variable "node_root_volume_gib" {
  description = "Size of each node's encrypted gp3 root volume in GiB (EKS's default, 20, is tight for the Airflow, MLflow and notebook images)."
  type        = number
  default     = 80
  validation {
    condition     = var.node_root_volume_gib >= 30 && var.node_root_volume_gib <= 1000
    error_message = "node_root_volume_gib must be 30 to 1000."
  }
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version of the control plane and nodegroups."
  type        = string
  default     = "1.33"
  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.33."
  }
}

variable "nodegroups" {
  description = "Managed nodegroups. desired_size is the size at creation only: afterwards the Cluster Autoscaler (addons.tf) sizes each group within the bounds ferry keeps from platform.yaml."
  type = map(object({
    instance_types = list(string)
    min_size       = number
    max_size       = number
    desired_size   = number
    labels         = map(string)
    taints = list(object({
      key    = string
      value  = string
      effect = string
    }))
  }))
  default = {
    system = {
      instance_types = ["m6i.large"]
      min_size       = 3
      max_size       = 6
      desired_size   = 3
      labels         = { role = "system" }
      taints         = []
    }
    cpu-training = {
      instance_types = ["c6i.4xlarge"]
      min_size       = 0
      max_size       = 10
      desired_size   = 0
      labels         = { role = "training" }
      taints         = [{ key = "dedicated", value = "training", effect = "NO_SCHEDULE" }]
    }
  }
  validation {
    condition = alltrue([
      for ng in values(var.nodegroups) :
      ng.min_size >= 0 && ng.min_size <= ng.desired_size && ng.desired_size <= ng.max_size && ng.max_size >= 1
    ])
    error_message = "every nodegroup needs 0 <= min_size <= desired_size <= max_size and max_size >= 1."
  }
  validation {
    condition     = contains(keys(var.nodegroups), "system")
    error_message = "a nodegroup named system is required (it runs ferry, Airflow and MLflow)."
  }
}

variable "gpu_nodegroup" {
  description = "Add a tainted GPU nodegroup (g5.xlarge, 0..4) for training."
  type        = bool
  default     = false
}

variable "cluster_autoscaler_version" {
  description = "Cluster Autoscaler image tag (registry.k8s.io/autoscaling/cluster-autoscaler); its minor version must be the cluster's, as the autoscaler's releases are cut per Kubernetes minor."
  type        = string
  default     = "v1.33.0"
  validation {
    condition     = can(regex("^v${replace(var.kubernetes_version, ".", "\\.")}\\.[0-9]+$", var.cluster_autoscaler_version))
    error_message = "cluster_autoscaler_version must be v<kubernetes_version>.<patch>, e.g. v1.33.0 for 1.33."
  }
}

variable "db_instance_class" {
  description = "RDS instance class of the Postgres that holds Airflow's and MLflow's metadata."
  type        = string
  default     = "db.t4g.medium"
  validation {
    condition     = startswith(var.db_instance_class, "db.")
    error_message = "db_instance_class must be an RDS instance class (db.*)."
  }
}

variable "ferry_image" {
  description = "ferry's container image (pushed to the ferry ECR repository by this repo's image workflow)."
  type        = string
  default     = "ghcr.io/ferry-dev/ferry:0.1.0"
}

variable "ferry_deploy_dir" {
  description = "The deploy/ directory of the ferry release you run, relative to this directory: ../deploy inside ferry's own repository; in an infrastructure repository of its own, a vendored copy of that release's deploy/ (README \"An infrastructure repository\")."
  type        = string
  default     = "../deploy"
}

variable "bootstrap_ferry" {
  description = "Apply deploy/ (ferry itself) once the cluster exists; ferry then takes over the platform."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags on every AWS resource."
  type        = map(string)
  default     = {}
}

variable "platform_repository" {
  description = "GitHub owner/name of your fork of platform-repo-template: its main branch may push the platform's images (mlflow-pyfunc, mlflow-server, airflow-ml, notebook) to ECR through GitHub OIDC (output images_role_arn). Empty: no such role."
  type        = string
  default     = ""
  validation {
    condition     = var.platform_repository == "" || can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.platform_repository))
    error_message = "platform_repository must be owner/name."
  }
}

variable "github_oidc_provider_arn" {
  description = "The account's existing IAM OIDC provider for token.actions.githubusercontent.com (an account holds one); empty: terraform creates it."
  type        = string
  default     = ""
}

variable "infra_repository" {
  description = "GitHub owner/name of the repository this directory is the root of: its PRs may plan (role <name>-terraform-plan, read-only, cluster view) and its main branch, in the GitHub environment `production`, may apply (role <name>-terraform-apply, cluster admin). Empty: no CI roles."
  type        = string
  default     = ""
  validation {
    condition     = var.infra_repository == "" || can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.infra_repository))
    error_message = "infra_repository must be owner/name."
  }
}

variable "state_bucket" {
  description = "The S3 bucket of backend.tf (the plan role may take its lock file)."
  type        = string
  default     = "acme-terraform-state"
}

variable "state_key" {
  description = "The state's key in state_bucket (backend.tf's `key`)."
  type        = string
  default     = "ml-platform/terraform.tfstate"
}
