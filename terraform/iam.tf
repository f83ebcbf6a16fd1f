# modelrun on Google Cloud: service accounts and their roles, least privilege. Each role is granted on the
# narrowest resource that works (a bucket, the repository, a service account, one function) and at the
# project only where the resources do not exist yet (Cloud Run services and builds the control plane creates)
# or the role cannot be narrower (Cloud SQL, logging, Eventarc). Each grant says why.
#   functions  the control plane (api, on_upload, on_build, drift, reconcile)
#   server     the model servers on Cloud Run
#   build      the Cloud Builds that make model images
#   fn-build   the Cloud Builds that turn the function source into the functions' images
#   invoker    Cloud Scheduler and Eventarc when they call the functions

data "google_project" "project" {}

data "google_storage_project_service_account" "gcs" {}

resource "google_service_account" "functions" {
  account_id   = "${var.name}-functions"
  display_name = "modelrun control plane (Cloud Functions)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "server" {
  account_id   = "${var.name}-server"
  display_name = "modelrun model servers (Cloud Run)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "build" {
  account_id   = "${var.name}-build"
  display_name = "modelrun model image builds (Cloud Build)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "function_build" {
  account_id   = "${var.name}-fn-build"
  display_name = "modelrun function builds (Cloud Build for Cloud Functions)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "invoker" {
  account_id   = "${var.name}-invoker"
  display_name = "modelrun schedules and event triggers"
  depends_on   = [google_project_service.apis]
}

locals {
  functions_member = "serviceAccount:${google_service_account.functions.email}"
  server_member    = "serviceAccount:${google_service_account.server.email}"
  build_member     = "serviceAccount:${google_service_account.build.email}"
  fn_build_member  = "serviceAccount:${google_service_account.function_build.email}"
  invoker_member   = "serviceAccount:${google_service_account.invoker.email}"

  project_roles = {
    # The control plane creates, updates and deletes one Cloud Run service per deployment and sets who may
    # invoke it (setIamPolicy is in run.admin only); the services do not exist yet, so project-wide.
    functions_run_admin = { member = local.functions_member, role = "roles/run.admin" }
    # It starts, reads and cancels the model image builds.
    functions_builds = { member = local.functions_member, role = "roles/cloudbuild.builds.editor" }
    # It connects to Cloud SQL through the connector (client) and signs in as its IAM database user.
    functions_sql_client = { member = local.functions_member, role = "roles/cloudsql.client" }
    functions_sql_user   = { member = local.functions_member, role = "roles/cloudsql.instanceUser" }
    # Model servers write the prediction log to Cloud SQL: the same two roles.
    server_sql_client = { member = local.server_member, role = "roles/cloudsql.client" }
    server_sql_user   = { member = local.server_member, role = "roles/cloudsql.instanceUser" }
    # Builds that run as a user-managed account must be allowed to write their logs.
    build_logs    = { member = local.build_member, role = "roles/logging.logWriter" }
    fn_build_logs = { member = local.fn_build_member, role = "roles/logging.logWriter" }
    # Function builds push the functions' images to the gcf-artifacts repository Cloud Functions creates
    # itself (not managed here, so it cannot be named) and read the base images.
    fn_build_images = { member = local.fn_build_member, role = "roles/artifactregistry.writer" }
    # Eventarc delivers the upload and build events with the invoker's identity.
    invoker_events = { member = local.invoker_member, role = "roles/eventarc.eventReceiver" }
    # Cloud Storage publishes object-finalize events to Pub/Sub for Eventarc.
    gcs_agent_publisher = { member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}", role = "roles/pubsub.publisher" }
  }
}

resource "google_project_iam_member" "roles" {
  #checkov:skip=CKV_GCP_49:builds.editor lets the control plane start builds; they can run as the build account only (actAs is granted on that account alone)
  for_each = merge(local.project_roles, {
    # With the private database, the control plane puts each model server's Cloud Run service on the VPC connector.
    for key, grant in { functions_vpc_user = { member = local.functions_member, role = "roles/vpcaccess.user" } } :
    key => grant if var.database_private_ip
  })
  project = var.project
  role    = each.value.role
  member  = each.value.member
}

# The control plane names the server and build accounts in the services and builds it creates: it must be
# allowed to act as them (only them).
resource "google_service_account_iam_member" "functions_act_as_server" {
  service_account_id = google_service_account.server.name
  role               = "roles/iam.serviceAccountUser"
  member             = local.functions_member
}

resource "google_service_account_iam_member" "functions_act_as_build" {
  service_account_id = google_service_account.build.name
  role               = "roles/iam.serviceAccountUser"
  member             = local.functions_member
}

# Pub/Sub signs the push requests of Eventarc triggers with the invoker's OIDC token.
resource "google_service_account_iam_member" "pubsub_agent_tokens" {
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:service-${data.google_project.project.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

# Models bucket: the control plane reads manifests, models and training data; model builds fetch the model and
# training data in their check step.
resource "google_storage_bucket_iam_member" "models_functions" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = local.functions_member
}

resource "google_storage_bucket_iam_member" "models_build" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = local.build_member
}

# Dashboard bucket: the drift function replaces the site's files (create + delete of the old object).
resource "google_storage_bucket_iam_member" "dashboard_functions" {
  bucket = google_storage_bucket.dashboard.name
  role   = "roles/storage.objectAdmin"
  member = local.functions_member
}

# Who may read the dashboard: the invokers (signed in), or anyone with dashboard_public.
resource "google_storage_bucket_iam_member" "dashboard_readers" {
  for_each = toset(var.dashboard_public ? [] : var.invokers)
  bucket   = google_storage_bucket.dashboard.name
  role     = "roles/storage.objectViewer"
  member   = each.value
}

resource "google_storage_bucket_iam_member" "dashboard_public" {
  #checkov:skip=CKV_GCP_28:only with dashboard_public=true (off by default): the user chose a public dashboard
  count  = var.dashboard_public ? 1 : 0
  bucket = google_storage_bucket.dashboard.name
  role   = "roles/storage.objectViewer"
  member = "allUsers"
}

# Journal bucket: model servers upload journal files at shutdown and replay (read, then delete) them at start;
# the reconciler replays them too.
resource "google_storage_bucket_iam_member" "journal_server" {
  bucket = google_storage_bucket.journal.name
  role   = "roles/storage.objectAdmin"
  member = local.server_member
}

resource "google_storage_bucket_iam_member" "journal_functions" {
  bucket = google_storage_bucket.journal.name
  role   = "roles/storage.objectAdmin"
  member = local.functions_member
}

# Function source bucket: function builds read the archive.
resource "google_storage_bucket_iam_member" "functions_source_build" {
  bucket = google_storage_bucket.functions.name
  role   = "roles/storage.objectViewer"
  member = local.fn_build_member
}

# Repository: model builds read the serving base image and push model images; the control plane deletes a
# deleted deployment's images (repoAdmin is the narrowest role with delete).
resource "google_artifact_registry_repository_iam_member" "images_build" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = local.build_member
}

resource "google_artifact_registry_repository_iam_member" "images_functions" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.repoAdmin"
  member     = local.functions_member
}
