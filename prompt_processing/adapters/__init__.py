"""The outside world, one module per system: Redis (``redis_client``, ``streams``, ``health``), Kafka,
S3, the Prefect API, and the one retry policy for calls to them.

Third-party errors are re-raised here as ours where a caller must decide on them. May import
``model`` and ``settings``; never the services, the activator or the autoscaler.
"""
