"""Faces: detectors behind one interface, and alignment/cropping to the model input."""
from .align import align_face, crop_box

__all__ = ["align_face", "crop_box"]
