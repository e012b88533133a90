"""Multi-label classification: a CNN image embedding fused with detector features and demographics.

Modules are imported on demand (``from hybridcxr.classify.fusion import FusionHead``) so that importing the
package does not load torch.
"""
