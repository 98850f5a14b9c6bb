"""Prompt processing on Prefect: domain code shared by flows, tasks and services."""
