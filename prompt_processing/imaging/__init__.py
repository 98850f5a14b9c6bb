"""The image algorithms of the ``process`` step, numpy in, numpy out (no I/O).

PSFs, source catalogues, template subtraction, the per-detector processing chain and FITS
bytes. May import nothing else of ours: the simulator (``pp_devkit.synth``) and the tasks
build on it, not the other way round.
"""
