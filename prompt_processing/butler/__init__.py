"""The data layer on lsst-daf-butler: the central repository, the activators' local repositories,
and what moves between them.

* ``instruments``: our cameras as ``lsst.pipe.base.Instrument`` classes (registry records).
* ``repo``: dataset types, collection names, ``init_central`` (``pp butler init``), ``open_central``.
* ``records``: a visit's dimension records (day_obs, group, exposure, visit...) from a raw's header.
* ``local``: one activator's local repository: preload from the central one, raw ingest, outputs, export.
* ``output_event``: the ``pp-output`` event that carries an export to the Butler writer, both ways.
* ``writer``: batched, idempotent ingest of ``pp-output`` events into the central registry.

May import ``model`` and ``settings``; the Butler writer service (``services.butler_writer``) and the
visit tasks build on it. Only the Butler writer writes the central registry.
"""
