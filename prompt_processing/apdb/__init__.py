"""The Alert Production Database: lsst-dax-apdb's ``ApdbSql`` on SQLite or PostgreSQL.

``db``: creating (``pp apdb init``) and opening it. ``ids``: the DiaSource ids, packed from the
visit-detector so a reprocessing gives the same ones. ``association``: DiaSources joined to the
DiaObjects near them, new DiaObjects for the rest, as the DataFrames ``Apdb.store`` takes.

The APDB is the record of what was processed: a visit-detector whose DiaSources it holds
(``containsVisitDetector``) has had its alerts made, and is not associated or stored again.
"""
