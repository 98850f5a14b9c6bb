"""The developer's kit: everything to run prompt processing on one machine, never shipped to production.

``stack`` starts and stops the embedded Redis, Kafka-protocol broker, S3 endpoint and Prefect
server (``stack_services``: how each is launched and probed; ``processes``: pid records and
process supervision with psutil); ``sim`` and ``night`` play the summit (next-visit events, raw images,
notifications; ``synth`` makes the images); ``demo`` and ``demo_report`` run and report a night.
Installed with the ``dev`` extra (``pip install 'prompt-processing[dev]'``); its ``pp`` commands
(``stack``, ``topics``, ``sim``, ``demo``) are added through the ``pp.commands`` entry point.
May import anything in ``prompt_processing``; ``prompt_processing``, ``flows`` and ``tasks`` never
import it.
"""
