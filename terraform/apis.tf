# modelrun on Google Cloud: the Google APIs the control plane, the builds and the model servers use.
# They stay enabled on `terraform destroy` (other things in the project may use them).

locals {
  apis = toset([
    "artifactregistry.googleapis.com",  # model images and the serving base image
    "cloudbuild.googleapis.com",        # model image builds, and the functions' own builds
    "cloudfunctions.googleapis.com",    # the control plane
    "cloudscheduler.googleapis.com",    # drift and reconcile schedules
    "compute.googleapis.com",           # the VPC of the private Cloud SQL IP
    "eventarc.googleapis.com",          # upload and build-event triggers
    "iam.googleapis.com",               # service accounts
    "pubsub.googleapis.com",            # Cloud Build notifications
    "run.googleapis.com",               # model servers (and the functions run on Cloud Run)
    "servicenetworking.googleapis.com", # private services access for Cloud SQL
    "sqladmin.googleapis.com",          # Cloud SQL, also what the Cloud SQL connector calls
    "storage.googleapis.com",           # buckets
    "vpcaccess.googleapis.com",         # the Serverless VPC Access connector
  ])
}

resource "google_project_service" "apis" {
  for_each           = local.apis
  service            = each.value
  disable_on_destroy = false
}
