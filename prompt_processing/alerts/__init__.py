"""Alerts: lsst-alert-packet's Avro schema in Confluent wire framing, with FITS cutouts.

``packet``: the schema, a record from APDB rows, encoding and decoding. ``cutouts``: the science,
template and difference stamps as FITS bytes (with the stamp's WCS).
"""
