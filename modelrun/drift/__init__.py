"""Drift monitoring: reference profiles, statistical tests, window aggregates and reports (design 3.4)."""
