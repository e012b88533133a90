"""Tests of hybridcxr.report (a package, so test_metrics.py does not collide with tests/detect/test_metrics.py)."""
