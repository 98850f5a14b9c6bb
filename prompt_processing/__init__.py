"""Prompt processing on Prefect: the runtime package (what production installs and runs).

Subpackages, from the bottom up; each may import only those below it (checked by
import-linter in ``make test``, see ``[tool.importlinter]`` in pyproject.toml):

* ``settings`` (module): the one ``Settings`` object (``PP_*``); imports nothing of ours.
* ``logs`` (module): one line per record, as text or JSON.
* ``model``: what the system talks about, pure: the NextVisit event, instruments and their
  detectors, admission rules, object-store layout, sky geometry, Redis/Kafka names, the error types.
* ``imaging``: the image algorithms of the ``process`` step, pure numpy.
* ``adapters``: the outside world: Redis streams, Kafka, S3, the Prefect API, the retry policy.
* ``butler``: the data layer on lsst-daf-butler: the central repository, the activators' local ones,
  the ``pp-output`` event and its batched ingest (beside ``adapters``; neither imports the other).
* ``reporting``: outcomes read back from the results streams: nights, their artifacts and plot.
* ``services``: long-running processes on one lifecycle: the next-visit fan-out, the arrival router,
  the Butler writer, the reporter; their Prometheus metrics.
* ``activator``: what the activator flow runs on: its work queue and its processing context (with
  the run's local Butler).
* ``autoscaler``: KEDA ScaledJob semantics for the activator runs: rules, spec, measurement, loop.
* ``cli``: the ``pp`` command.

The Prefect flows and tasks live beside this package (``flows/``, ``tasks/``) and may import it.
The embedded stack, the summit simulator and the demo live in ``pp_devkit``, which production
code never imports.
"""
