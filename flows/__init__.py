"""Prefect flows: ``activator`` (a warm worker: one long-lived run processing many visit-detectors) and
``process-visit-detector`` (one visit-detector per run; deployed as ``process-visit-detector/rerun``)."""
