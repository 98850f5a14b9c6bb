"""Pure image code (numpy in, numpy out): synthetic data for the simulator and the processing steps."""
