"""privfer: privacy-conscious facial expression recognition."""
__version__ = "0.1.0"

__all__ = ["Analyzer", "__version__"]


def __getattr__(name):  # lazy: `import privfer` stays light
    if name == "Analyzer":
        from .infer.analyzer import Analyzer

        return Analyzer
    raise AttributeError(name)
