"""Long-running services on one lifecycle (``lifecycle.serve``): startup, ticks, shutdown.

``kafka_service`` is the consumer-group base with its delivery guarantee; ``fanout`` (next-visit
-> instrument streams) and ``router`` (raw-image notifications -> presence) build on it; the
Butler writer will too. ``reporter`` (results streams -> night artifacts) runs on the same
lifecycle; ``metrics`` holds every service's Prometheus metrics. May import ``reporting``,
``adapters``, ``model`` and ``settings``.
"""
