"""Evaluation the way the field reports it: per-class AUROC with bootstrap CIs, thresholds, F1."""
