"""Alert Production as lsst-pipe-base PipelineTasks, run by its executor on an activator's local Butler.

Tasks (each a ``PipelineTask`` with connections and a pex_config config, shaped like Rubin's):
``isr`` (per exposure: bias, gain, flat), ``calibrate`` (snaps combined, background, detection, the
WCS, the photometric zero point), ``template`` (the template datasets overlapping the detector on
the science pixel grid), ``subtract`` (PSF-matched subtraction), ``detect`` (DIA sources measured,
dipoles and residuals flagged out), ``associate`` (joined to the APDB's DiaObjects; nothing written)
and ``package`` (one framed Avro alert per DIA source). Pipelines (``ApPipe``, ``SingleFrame``,
``Isr``) are YAML files per instrument in ``data/``; ``selection`` maps a visit to the pipelines to
try; ``runner`` builds and executes them, falling through to the next while a graph cannot be built.

Nothing here writes outside the local repository: ``tasks/publish.py`` stores in the APDB and sends.
"""
