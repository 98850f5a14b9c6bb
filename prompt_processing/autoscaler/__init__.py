"""``pp autoscale``: KEDA ScaledJob semantics for the activator flow runs.

``rules`` (KEDA's formulas, pure), ``spec`` (the ScaledJob-like spec file), ``metrics`` (what one
decision measures in Redis and Prefect), ``loop`` (the service: wake, measure, decide, create
runs). Runs on ``services.lifecycle``; may import ``services``, ``adapters``, ``model`` and
``settings``.
"""
