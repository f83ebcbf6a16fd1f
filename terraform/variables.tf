# modelrun on Google Cloud: the inputs. Only `project` is required:
#   terraform apply -var project=my-project
# Everything else has a default that is private and safe; see each description.

variable "project" {
  description = "Google Cloud project ID everything is created in."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a project ID: 6-30 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the functions, Cloud Run model servers, builds, Artifact Registry, buckets and Cloud SQL."
  type        = string
  default     = "us-central1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west1."
  }
}

variable "name" {
  description = "Prefix of every resource name (service accounts, buckets, functions, the Cloud SQL instance)."
  type        = string
  default     = "modelrun"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}[a-z0-9]$", var.name))
    error_message = "name must be 3-16 lowercase letters, digits and hyphens, starting with a letter (service account IDs are at most 30 characters)."
  }
}

variable "invokers" {
  description = "IAM members allowed to call the REST API (the `api` function) and every model server, e.g. [\"user:ann@example.com\", \"group:ml@example.com\"]. Empty: nobody but the control plane itself (private)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.invokers : can(regex("^(user|group|serviceAccount|domain):.+", m))])
    error_message = "each invoker must be user:EMAIL, group:EMAIL, serviceAccount:EMAIL or domain:DOMAIN (allUsers is not accepted: the API would be public)."
  }
}

variable "database_engine" {
  description = "Cloud SQL engine of the deployments and the prediction log: mysql or postgresql."
  type        = string
  default     = "mysql"
  validation {
    condition     = contains(["mysql", "postgresql"], var.database_engine)
    error_message = "database_engine must be mysql or postgresql."
  }
}

variable "database_tier" {
  description = "Cloud SQL machine tier (Enterprise edition), e.g. db-custom-1-3840 (1 vCPU, 3.75 GB) or db-custom-2-7680."
  type        = string
  default     = "db-custom-1-3840"
  validation {
    condition     = can(regex("^db-", var.database_tier))
    error_message = "database_tier must be a Cloud SQL tier such as db-custom-1-3840."
  }
}

variable "database_private_ip" {
  description = "true: Cloud SQL has only a private IP in a VPC made here, reached through a Serverless VPC Access connector by the functions and the model servers. false: it gets a public IP with no authorized networks, so only the Cloud SQL connector (IAM-checked, TLS) reaches it, and no VPC is made."
  type        = bool
  default     = true
}

variable "vpc_connector_cidr" {
  description = "Unused /28 range for the Serverless VPC Access connector (with database_private_ip)."
  type        = string
  default     = "10.8.0.0/28"
  validation {
    condition     = alltrue([can(cidrnetmask(var.vpc_connector_cidr)), endswith(var.vpc_connector_cidr, "/28")])
    error_message = "vpc_connector_cidr must be an IPv4 /28 range such as 10.8.0.0/28."
  }
}

variable "deletion_protection" {
  description = "Protect the Cloud SQL instance (the deployments and every logged prediction) from `terraform destroy`."
  type        = bool
  default     = true
}

variable "dashboard_public" {
  description = "false: the dashboard bucket is readable by `invokers` only (open it signed in, at the dashboard_url output). true: anyone with the URL can read the drift dashboard."
  type        = bool
  default     = false
}

variable "serving_image_tag" {
  description = "Tag (e.g. latest, or the commit cloudbuild.yaml was run on) or digest (sha256:...) of the serving base image in the repository; model images are built on it. Pin a digest for repeatable builds; change it after building a new release."
  type        = string
  default     = "latest"
  validation {
    condition     = can(regex("^(sha256:[0-9a-f]{64}|[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$", var.serving_image_tag))
    error_message = "serving_image_tag must be an image tag or a digest sha256:<64 hex digits>."
  }
}

variable "function_source" {
  description = "Path of the function source archive (`make function-source` writes build/function-source.zip). Null: that file."
  type        = string
  default     = null
}

variable "drift_schedule" {
  description = "Cron schedule (Cloud Scheduler) of the `drift` function: refresh every deployment's drift reports and the dashboard."
  type        = string
  default     = "*/15 * * * *"
  validation {
    condition     = can(regex("^\\S+( \\S+){4}$", var.drift_schedule))
    error_message = "drift_schedule must be a five-field cron expression."
  }
}

variable "reconcile_schedule" {
  description = "Cron schedule of the `reconcile` function: the periodic pass that moves deployments on when no API call or build event did."
  type        = string
  default     = "* * * * *"
  validation {
    condition     = can(regex("^\\S+( \\S+){4}$", var.reconcile_schedule))
    error_message = "reconcile_schedule must be a five-field cron expression."
  }
}

variable "schedule_time_zone" {
  description = "Time zone of the two schedules (an IANA name)."
  type        = string
  default     = "Etc/UTC"
}

variable "function_memory" {
  description = "Memory of the api, on_upload, on_build and reconcile functions."
  type        = string
  default     = "1Gi"
  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.function_memory))
    error_message = "function_memory must be like 512Mi or 1Gi."
  }
}

variable "drift_memory" {
  description = "Memory of the drift function (it reads prediction-log chunks and runs the statistical tests)."
  type        = string
  default     = "2Gi"
  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.drift_memory))
    error_message = "drift_memory must be like 1Gi or 2Gi."
  }
}

variable "labels" {
  description = "Labels added to the resources that take them."
  type        = map(string)
  default     = {}
}
