# modelrun on Google Cloud: Cloud Scheduler calls the `drift` and `reconcile` functions with an OIDC token of
# the invoker account (audience: the function's URL), which alone may invoke them.

locals {
  schedules = {
    drift     = var.drift_schedule
    reconcile = var.reconcile_schedule
  }
}

resource "google_cloud_scheduler_job" "schedules" {
  for_each         = local.schedules
  name             = "${var.name}-${each.key}"
  region           = var.region
  schedule         = each.value
  time_zone        = var.schedule_time_zone
  attempt_deadline = "600s"

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.control[each.key].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = google_cloudfunctions2_function.control[each.key].service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.function_invokers]
}
