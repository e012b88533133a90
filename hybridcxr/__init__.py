"""hybridcxr: chest X-ray detection (YOLOv8) and fusion classification toolkit."""

__version__ = "0.1.0"
