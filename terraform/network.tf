# modelrun on Google Cloud: the private network of Cloud SQL (only with var.database_private_ip, the default).
# Cloud SQL gets a private IP through private services access (a peered range in this VPC), and the functions
# and the model servers reach it through one Serverless VPC Access connector, for private ranges only (their
# calls to Google APIs and to Cloud Run stay on the default path). The Cloud SQL connector in the code then
# connects with MODELRUN_CLOUDSQL_IP_TYPE=private.

resource "google_compute_network" "vpc" {
  count                   = var.database_private_ip ? 1 : 0
  name                    = var.name
  auto_create_subnetworks = false
  depends_on              = [google_project_service.apis]
}

# Nothing in this VPC takes inbound connections (Cloud SQL lives in the peered network; the connector's own
# rules, which Google adds, take precedence at a higher priority).
resource "google_compute_firewall" "deny_ingress" {
  count     = var.database_private_ip ? 1 : 0
  name      = "${var.name}-deny-ingress"
  network   = google_compute_network.vpc[0].name
  direction = "INGRESS"
  priority  = 65534
  deny {
    protocol = "all"
  }
  source_ranges = ["0.0.0.0/0"]
  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_global_address" "sql_range" {
  count         = var.database_private_ip ? 1 : 0
  name          = "${var.name}-sql-range"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = 20
  network       = google_compute_network.vpc[0].id
}

resource "google_service_networking_connection" "sql" {
  count                   = var.database_private_ip ? 1 : 0
  network                 = google_compute_network.vpc[0].id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.sql_range[0].name]
}

resource "google_vpc_access_connector" "connector" {
  count         = var.database_private_ip ? 1 : 0
  name          = "${var.name}-vpc"
  region        = var.region
  network       = google_compute_network.vpc[0].name
  ip_cidr_range = var.vpc_connector_cidr
  min_instances = 2
  max_instances = 3
  machine_type  = "e2-micro"
}
