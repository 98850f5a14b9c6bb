"""Prefect flows: the activator (one warm worker per long-lived run) and process_visit (manual reruns)."""
