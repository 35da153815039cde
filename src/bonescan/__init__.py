"""bonescan: bone-scintigraphy classification pipeline (Yu et al. 2023)."""
__version__ = "0.1.0"
