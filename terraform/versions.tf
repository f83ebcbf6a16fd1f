# modelrun on Google Cloud: Terraform and provider versions, and the provider's project and region.
# Every resource of this configuration lives in var.project / var.region.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source = "hashicorp/google"
      # 7.x: google_sql_user.database_roles (the IAM database users' grants, see database.tf)
      version = "~> 7.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}
