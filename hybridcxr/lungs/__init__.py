"""Lung fields: a lung segmenter trained from scratch on real masks, ``hybridcxr segment``, and the anatomy
measurements read from its masks (areas, extents, intensities, a cardiothoracic ratio estimate, a quality flag).

Modules: ``data`` (mask datasets, patient-grouped split), ``augment`` (CXR-safe albumentations), ``model`` (the
network), ``card`` (the run's JSON card and safetensors weights, checked on load), ``train`` (the training loop,
resumable), ``predict`` (inference at the original size), ``measures`` (measurements and quality flag),
``segment`` (the batch job) and ``cli`` (the commands); the DICOM Segmentation is ``hybridcxr.dicom_out.seg``.
"""
