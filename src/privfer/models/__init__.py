"""Models: the CNN branch, the ResNet branch and their fusion, registered by name; safe loading."""
from .registry import MODELS, build_model
from .io import LoadedModel, load_model, save_model

__all__ = ["MODELS", "build_model", "LoadedModel", "load_model", "save_model"]
