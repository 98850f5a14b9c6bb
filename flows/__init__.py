"""Prefect flows: the activator (warm worker) and process_visit land here with the workers issue."""
