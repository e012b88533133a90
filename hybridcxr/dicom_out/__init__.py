"""DICOM objects hybridcxr writes into the source study: Structured Reports, Segmentations, Secondary Captures."""
