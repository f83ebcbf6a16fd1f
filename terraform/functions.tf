# modelrun on Google Cloud: the control plane as Cloud Functions (2nd gen, python311), one source archive
# (`make function-source`; its md5 names the object, so a changed archive redeploys every function) and
# the triggers:
#   api        HTTPS, the REST API; private: only var.invokers may call it (Cloud Functions IAM, MODELRUN_AUTH=none)
#   on_upload  Eventarc: an object finalized in the models bucket (a manifest deploys); retried on failure
#   on_build   Eventarc: a message on Pub/Sub topic `cloud-builds` (Cloud Build publishes every status change)
#   drift      HTTP, called by Cloud Scheduler (scheduler.tf); refreshes drift reports and the dashboard
#   reconcile  HTTP, called by Cloud Scheduler; the periodic reconciler pass
# The event and scheduled functions accept internal traffic only (Eventarc, Pub/Sub and Cloud Scheduler of this
# project count as internal); the api accepts any network, behind IAM.

locals {
  function_source = coalesce(var.function_source, "${path.module}/../build/function-source.zip")
  # Every setting the control plane needs on Google Cloud (modelrun/settings.py); the rest keep their defaults.
  function_env = {
    MODELRUN_HOME                  = "/tmp/modelrun" # the only writable folder of a function
    MODELRUN_AUTH                  = "none"          # Cloud Functions IAM checks callers
    MODELRUN_RECONCILE_ON_WRITE    = "true"          # nothing runs between requests: reconcile right after each write
    MODELRUN_STORAGE               = "gcs"
    MODELRUN_BUILDER               = "cloudbuild"
    MODELRUN_RUNNER                = "cloudrun"
    MODELRUN_GCP_PROJECT           = var.project
    MODELRUN_GCP_REGION            = var.region
    MODELRUN_ARTIFACT_REPOSITORY   = google_artifact_registry_repository.images.repository_id
    MODELRUN_SERVING_IMAGE         = local.serving_image
    MODELRUN_BUILD_SERVICE_ACCOUNT = google_service_account.build.email
    MODELRUN_RUN_SERVICE_ACCOUNT   = google_service_account.server.email
    # The control plane reads each new revision's model metadata, so it invokes the model servers too.
    MODELRUN_RUN_INVOKERS        = join(",", concat([local.functions_member], var.invokers))
    MODELRUN_RUN_VPC_CONNECTOR   = var.database_private_ip ? google_vpc_access_connector.connector[0].id : ""
    MODELRUN_DATABASE_URL        = local.database_urls["functions"]
    MODELRUN_SERVER_DATABASE_URL = local.database_urls["server"]
    MODELRUN_CLOUDSQL_INSTANCE   = local.database.connection_name
    MODELRUN_CLOUDSQL_IAM_AUTH   = "true"
    MODELRUN_CLOUDSQL_IP_TYPE    = var.database_private_ip ? "private" : "public"
    MODELRUN_JOURNAL_URI         = "gs://${google_storage_bucket.journal.name}/journal"
    MODELRUN_DASHBOARD_BUCKET    = google_storage_bucket.dashboard.name
  }
  functions = {
    api = {
      memory        = var.function_memory
      timeout       = 300
      ingress       = "ALLOW_ALL"
      event_type    = null
      pubsub_topic  = null
      event_filters = {}
      retry         = null
    }
    on_upload = {
      memory        = var.function_memory
      timeout       = 300
      ingress       = "ALLOW_INTERNAL_ONLY"
      event_type    = "google.cloud.storage.object.v1.finalized"
      pubsub_topic  = null
      event_filters = { bucket = google_storage_bucket.models.name }
      retry         = "RETRY_POLICY_RETRY" # a 500 (Cloud Storage or the database unavailable) is delivered again
    }
    on_build = {
      memory        = var.function_memory
      timeout       = 300
      ingress       = "ALLOW_INTERNAL_ONLY"
      event_type    = "google.cloud.pubsub.topic.v1.messagePublished"
      pubsub_topic  = google_pubsub_topic.cloud_builds.id
      event_filters = {}
      retry         = "RETRY_POLICY_DO_NOT_RETRY" # the scheduled reconcile pass picks up a missed build event
    }
    drift = {
      memory        = var.drift_memory
      timeout       = 540
      ingress       = "ALLOW_INTERNAL_ONLY"
      event_type    = null
      pubsub_topic  = null
      event_filters = {}
      retry         = null
    }
    reconcile = {
      memory        = var.function_memory
      timeout       = 300
      ingress       = "ALLOW_INTERNAL_ONLY"
      event_type    = null
      pubsub_topic  = null
      event_filters = {}
      retry         = null
    }
  }
}

resource "google_storage_bucket_object" "function_source" {
  name   = "function-source-${filemd5(local.function_source)}.zip"
  bucket = google_storage_bucket.functions.name
  source = local.function_source
}

# Cloud Build publishes every build's status changes here, when a topic of this name exists.
resource "google_pubsub_topic" "cloud_builds" {
  #checkov:skip=CKV_GCP_83:build status messages hold no secrets; Google-managed encryption
  name       = "cloud-builds"
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

resource "google_cloudfunctions2_function" "control" {
  #checkov:skip=CKV_GCP_124:the api is called from outside Google Cloud (the CLI); IAM checks every call and only var.invokers may make one; the other four accept internal traffic only
  for_each = local.functions
  name     = "${var.name}-${replace(each.key, "_", "-")}"
  location = var.region
  labels   = var.labels

  build_config {
    runtime         = "python311"
    entry_point     = each.key
    service_account = google_service_account.function_build.id
    source {
      storage_source {
        bucket = google_storage_bucket.functions.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    available_memory               = each.value.memory
    timeout_seconds                = each.value.timeout
    max_instance_count             = 10
    ingress_settings               = each.value.ingress
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.functions.email
    environment_variables          = local.function_env
    vpc_connector                  = var.database_private_ip ? google_vpc_access_connector.connector[0].id : null
    vpc_connector_egress_settings  = var.database_private_ip ? "PRIVATE_RANGES_ONLY" : null
  }

  dynamic "event_trigger" {
    for_each = each.value.event_type[*] # one trigger for the event functions, none for the HTTP ones
    content {
      trigger_region        = var.region
      event_type            = each.value.event_type
      pubsub_topic          = each.value.pubsub_topic
      retry_policy          = each.value.retry
      service_account_email = google_service_account.invoker.email
      dynamic "event_filters" {
        for_each = each.value.event_filters
        content {
          attribute = event_filters.key
          value     = event_filters.value
        }
      }
    }
  }

  depends_on = [google_project_iam_member.roles, google_storage_bucket_iam_member.functions_source_build, google_sql_user.iam]
}

# Who may call which function (their Cloud Run services): the users and groups in var.invokers the api;
# the invoker account (Cloud Scheduler, Eventarc) the other four.
locals {
  function_invokers = merge(
    { for m in var.invokers : "api ${m}" => { function = "api", member = m } },
    { for f in ["on_upload", "on_build", "drift", "reconcile"] : "${f} invoker" => { function = f, member = local.invoker_member } },
  )
}

resource "google_cloud_run_v2_service_iam_member" "function_invokers" {
  for_each = local.function_invokers
  location = var.region
  name     = google_cloudfunctions2_function.control[each.value.function].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value.member
}
