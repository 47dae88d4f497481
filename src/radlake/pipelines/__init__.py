"""Pipelines: plain functions with explicit arguments, called by the CLI, API and flows."""
