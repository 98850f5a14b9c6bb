"""Long-running services on one lifecycle (``lifecycle.serve``): startup, ticks, shutdown.

``kafka_service`` is the consumer-group base with its delivery guarantee; ``fanout`` (next-visit
-> instrument streams) and ``router`` (raw-image notifications -> presence) build on it; the
Butler writer will too. May import ``adapters``, ``model`` and ``settings``.
"""
