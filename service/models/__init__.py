"""Models and calibration: which model serves, switching it, its calibrator and authenticity heads."""
