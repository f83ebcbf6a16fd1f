# modelrun on Google Cloud: Cloud SQL (MySQL by default, PostgreSQL with database_engine), its database, and
# one IAM database user per service account that connects (the functions, the model servers): no passwords
# anywhere, the Cloud SQL connector signs in with the account's own token (MODELRUN_CLOUDSQL_IAM_AUTH=true).
# Only the Cloud SQL connector gets in: client certificates are required (the connector presents short-lived
# ones), and the instance has a private IP only (database_private_ip) or a public one without authorized networks.
# Backups run daily with point-in-time recovery.

locals {
  mysql = contains(["mysql"], var.database_engine)
  # The IAM database user of each service account that connects: MySQL drops the address after "@",
  # PostgreSQL keeps `name@project.iam` (written `name%40project.iam` in a URL).
  database_accounts = {
    functions = google_service_account.functions.email
    server    = google_service_account.server.email
  }
  database_url_users = {
    for key, email in local.database_accounts :
    key => local.mysql ? split("@", email)[0] : urlencode(trimsuffix(email, ".gserviceaccount.com"))
  }
  database_driver = local.mysql ? "mysql+pymysql" : "postgresql+pg8000"
  database        = one(concat(google_sql_database_instance.mysql, google_sql_database_instance.postgresql))
  database_urls = {
    for key, user in local.database_url_users :
    key => "${local.database_driver}://${user}@/${google_sql_database.modelrun.name}"
  }
}

# One instance resource per engine (count picks one): each has its own static flags, which checkov can check.
# IAM database authentication is on; the rest is logging (PostgreSQL) and hardening (MySQL).
resource "google_sql_database_instance" "mysql" {
  #checkov:skip=CKV_GCP_60:a public IP only with database_private_ip=false (off by default), without authorized networks: only the IAM-checked Cloud SQL connector reaches it
  count               = local.mysql ? 1 : 0
  name                = var.name
  region              = var.region
  database_version    = "MYSQL_8_0"
  deletion_protection = var.deletion_protection
  settings {
    tier              = var.database_tier
    edition           = "ENTERPRISE"
    availability_type = "ZONAL"
    user_labels       = var.labels
    ip_configuration {
      ipv4_enabled    = var.database_private_ip ? false : true # public IP only without the private one
      private_network = var.database_private_ip ? google_compute_network.vpc[0].id : null
      ssl_mode        = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED" # the Cloud SQL connector presents client certificates
    }
    insights_config {
      query_insights_enabled = true
    }
    backup_configuration {
      enabled            = true
      start_time         = "03:00"
      binary_log_enabled = true # point-in-time recovery
    }
    database_flags {
      name  = "cloudsql_iam_authentication"
      value = "on"
    }
    database_flags {
      name  = "local_infile"
      value = "off"
    }
    database_flags {
      name  = "skip_show_database"
      value = "on"
    }
  }
  depends_on = [google_project_service.apis, google_service_networking_connection.sql]
}

resource "google_sql_database_instance" "postgresql" {
  #checkov:skip=CKV_GCP_60:a public IP only with database_private_ip=false (off by default), without authorized networks: only the IAM-checked Cloud SQL connector reaches it
  #checkov:skip=CKV2_GCP_13:log_duration would log a line for every prediction-log INSERT; Query Insights shows slow statements instead
  count               = local.mysql ? 0 : 1
  name                = var.name
  region              = var.region
  database_version    = "POSTGRES_18"
  deletion_protection = var.deletion_protection
  settings {
    tier              = var.database_tier
    edition           = "ENTERPRISE"
    availability_type = "ZONAL"
    user_labels       = var.labels
    ip_configuration {
      ipv4_enabled    = var.database_private_ip ? false : true # public IP only without the private one
      private_network = var.database_private_ip ? google_compute_network.vpc[0].id : null
      ssl_mode        = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED" # the Cloud SQL connector presents client certificates
    }
    insights_config {
      query_insights_enabled = true
    }
    backup_configuration {
      enabled                        = true
      start_time                     = "03:00"
      point_in_time_recovery_enabled = true
    }
    database_flags {
      name  = "cloudsql.iam_authentication"
      value = "on"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
  }
  depends_on = [google_project_service.apis, google_service_networking_connection.sql]
}

resource "google_sql_database" "modelrun" {
  name     = "modelrun"
  instance = local.database.name
}

resource "google_sql_user" "iam" {
  for_each = local.database_accounts
  instance = local.database.name
  name     = local.mysql ? each.value : trimsuffix(each.value, ".gserviceaccount.com")
  type     = "CLOUD_IAM_SERVICE_ACCOUNT"
  # Both create and alter modelrun's tables (the control plane and each model server make sure the schema
  # exists at start); the instance holds nothing but modelrun's database.
  database_roles = ["cloudsqlsuperuser"]
}
