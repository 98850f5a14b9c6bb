"""Prefect tasks of process_visit (preload, wait_for_images, process, publish) land here with the workers issue."""
