"""Models by name: ``cnn``, ``resnet``, ``fusion`` (default), ``scatter`` (fixed scattering features + head)."""
from __future__ import annotations

from torch import nn

from ..errors import PrivferError
from .cnn import CNN
from .fusion import Fusion
from .resnet import ResNet
from .scatter import ScatterLinear, ScatterNet

MODELS: dict[str, type[nn.Module]] = {"cnn": CNN, "resnet": ResNet, "fusion": Fusion, "scatter": ScatterNet, "scatter-linear": ScatterLinear}
DEFAULT_MODEL = "fusion"


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Instantiate a registered model; unknown names or options give a one-line PrivferError."""
    if name not in MODELS:
        raise PrivferError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    try:
        return MODELS[name](num_classes, **kwargs)
    except TypeError as e:
        raise PrivferError(f"bad options for model {name!r}: {e}") from None


def count_flops(model: nn.Module, input_size: int = 48) -> int:
    """Forward FLOPs for one face, measured with torch.utils.flop_counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 1, input_size, input_size))
    model.train(was)
    return int(fc.get_total_flops())
