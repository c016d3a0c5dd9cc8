"""Monitoring: windows, features, drift detection, quality signals and alert policies."""
