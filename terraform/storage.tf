# modelrun on Google Cloud: the buckets and the Artifact Registry repository.
# - models: users upload model folders and a `modelrun.json` manifest last; its finalize event deploys
#   (functions.tf). Versioned, so an overwritten model can be recovered.
# - dashboard: the static drift dashboard the `drift` function publishes (JSON with Cache-Control: no-cache,
#   set by the code on each upload).
# - journal: prediction-log journal files a model server kept when it stopped before the database took them
#   (MODELRUN_JOURNAL_URI); replayed and deleted by the next instance or the reconciler.
# - functions: the function source archive.
# All buckets: uniform bucket-level access, public access prevented (the dashboard only when dashboard_public).

locals {
  bucket_prefix = "${var.project}-${var.name}"
}

resource "google_storage_bucket" "models" {
  #checkov:skip=CKV_GCP_62:access logging to a second bucket is left to the project's audit logs (Data Access logs)
  name                        = "${local.bucket_prefix}-models"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  versioning {
    enabled = true
  }
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "dashboard" {
  #checkov:skip=CKV_GCP_62:access logging to a second bucket is left to the project's audit logs (Data Access logs)
  #checkov:skip=CKV_GCP_78:versioning is useless here: every drift refresh rewrites the files whole
  #checkov:skip=CKV_GCP_114:public access is allowed only with dashboard_public=true (off by default)
  name                        = "${local.bucket_prefix}-dashboard"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = var.dashboard_public ? "inherited" : "enforced"
  labels                      = var.labels
  website {
    main_page_suffix = "index.html"
  }
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "journal" {
  #checkov:skip=CKV_GCP_62:access logging to a second bucket is left to the project's audit logs (Data Access logs)
  #checkov:skip=CKV_GCP_78:journal objects are written once and deleted after replay; versions would keep replayed rows
  name                        = "${local.bucket_prefix}-journal"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  depends_on                  = [google_project_service.apis]
}

resource "google_storage_bucket" "functions" {
  #checkov:skip=CKV_GCP_62:access logging to a second bucket is left to the project's audit logs (Data Access logs)
  name                        = "${local.bucket_prefix}-functions"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  versioning {
    enabled = true
  }
  depends_on = [google_project_service.apis]
}

# Docker repository of the serving base image (cloudbuild.yaml pushes it) and of one image per model revision.
resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption; a customer-managed key is the project's choice, not a default
  repository_id = var.name
  location      = var.region
  format        = "DOCKER"
  description   = "modelrun: the serving base image and the model images built on it"
  labels        = var.labels
  depends_on    = [google_project_service.apis]
}
