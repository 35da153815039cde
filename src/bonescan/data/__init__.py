"""Tabular and tensor data of the pipeline: the image manifest, patient-level splits, torch datasets, augmentation."""
