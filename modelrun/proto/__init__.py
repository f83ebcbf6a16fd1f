"""Generated Open Inference Protocol messages and stubs (`make protos` rewrites them; do not edit)."""
