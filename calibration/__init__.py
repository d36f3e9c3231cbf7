"""Calibration: observers, range methods, layer-wise calibration, statistics correction."""
