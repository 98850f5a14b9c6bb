"""Prefect tasks of a visit-detector: preload, wait_for_images, process, publish.

Each is small and typed, does one kind of I/O, and retries (Prefect ``retries``) only on
``RetriableError``; ``run_visit_detector`` chains them. Retry counts come from settings at call time
(``with_step_options``), never from the environment at import.
"""
