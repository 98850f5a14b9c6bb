"""What the activator flow runs on: its side of an instrument stream (``queue``: claim, read,
acknowledge, dead-letter, hand back) and the clients and caches a visit-detector's steps share
(``context``, also used by a rerun, with the run's local Butler). May import ``adapters``, ``butler``,
``model`` and ``settings``.
"""
