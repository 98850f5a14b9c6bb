"""What the system talks about, as pure data and pure functions (no I/O).

The NextVisit event and the fanned-out stream entry (``events``), the cameras and their active
detectors (``instruments``), which events are fanned out (``admission``), where objects live in
the store (``layout``), every Redis key, stream and Kafka header name (``naming``), and the
outcome types of a visit-detector (``errors``). May import: ``prompt_processing.settings``.
"""
