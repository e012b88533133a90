"""Tests of hybridcxr.lungs (a package, so its test_train.py and test_cli.py do not collide with other folders')."""
