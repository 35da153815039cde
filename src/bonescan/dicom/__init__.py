"""DICOM in and out: synthetic phantom studies, decoding into views, anonymization and residual-PHI scanning."""
