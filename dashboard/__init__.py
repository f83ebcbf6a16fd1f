"""Static files of the drift dashboard, shipped as package data."""
