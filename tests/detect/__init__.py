"""Tests of hybridcxr.detect (a package, so test_train.py and test_evaluate.py do not collide with tests/classify/)."""
