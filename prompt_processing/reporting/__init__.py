"""What happened, read back from the results streams: outcomes, nights, reports, metrics.

``outcomes`` parses result records and finds each visit-detector's latest outcome (what
``pp rerun --failed`` reruns); ``night`` folds a night's outcomes into the table and summary that
the night artifact, ``pp report`` and the reporter service show. May import ``adapters``,
``model`` and ``settings``; the services and the CLI build on it.
"""
