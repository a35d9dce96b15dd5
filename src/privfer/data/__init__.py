"""Datasets: KIND:PATH@SPLIT specs, one reader per dataset layout, and the preprocessing cache."""
from .spec import DatasetSpec, parse_spec
from .sample import Sample, ReadResult
from .readers import read_dataset, READERS
from .cache import FaceSet, load_faces

__all__ = ["DatasetSpec", "parse_spec", "Sample", "ReadResult", "read_dataset", "READERS", "FaceSet", "load_faces"]
