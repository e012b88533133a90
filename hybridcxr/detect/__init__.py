"""YOLOv8 detection of chest X-ray findings (ultralytics)."""
