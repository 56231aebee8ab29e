"""Metric writers and progress reporting."""
