"""Models by name: ``cnn``, ``resnet``, ``fusion`` (default), ``scatter`` / ``scatter-linear`` (fixed scattering
features + head), ``face-linear`` (fixed CenterFace backbone features + linear head), ``facemesh-linear``
(CenterFace and MediaPipe Face Mesh features + linear head), ``face-onet-linear`` and ``facemesh-onet-linear``
(the same with MTCNN ONet's features appended), ``face-attn-linear`` and ``facemesh-attn-linear`` (CenterFace's,
or CenterFace's and Face Mesh's, features and the attention mesh's lips and eye regions + linear head;
``facemesh-attn-onet-linear`` with ONet's too), ``facemesh-attn-onet-res-linear``,
``facemesh-attn-res-linear`` and ``face-onet-res-linear`` (HSE FaceRes' features appended to those of
``facemesh-attn-onet-linear``, ``facemesh-attn-linear`` and ``face-onet-linear``), ``facemesh-tuned`` (the same
front-ends with Face Mesh's trunk trained too, and one hidden layer)."""
from __future__ import annotations

from torch import nn

from ..errors import PrivferError
from .cnn import CNN
from .facefeat import FaceFeatureLinear
from .attnmesh import FaceAttentionLinear, FaceMeshAttentionLinear, FaceMeshAttentionONetLinear
from .facemesh import FaceMeshLinear, FaceMeshTuned
from .faceres import FaceMeshAttentionONetResLinear, FaceMeshAttentionResLinear, FaceONetResLinear
from .fusion import Fusion
from .onet import FaceMeshONetLinear, FaceONetLinear
from .resnet import ResNet
from .scatter import DEFAULT_VARIANT, ScatterLinear, ScatterNet

MODELS: dict[str, type[nn.Module]] = {"cnn": CNN, "resnet": ResNet, "fusion": Fusion, "scatter": ScatterNet, "scatter-linear": ScatterLinear,
                                   "face-linear": FaceFeatureLinear, "facemesh-linear": FaceMeshLinear,
                                   "facemesh-tuned": FaceMeshTuned, "face-attn-linear": FaceAttentionLinear, "facemesh-attn-linear": FaceMeshAttentionLinear,
                                   "facemesh-attn-onet-linear": FaceMeshAttentionONetLinear,
                                   "facemesh-attn-onet-res-linear": FaceMeshAttentionONetResLinear,
                                   "facemesh-attn-res-linear": FaceMeshAttentionResLinear,
                                   "face-onet-res-linear": FaceONetResLinear,
                                   "face-onet-linear": FaceONetLinear, "facemesh-onet-linear": FaceMeshONetLinear}
DEFAULT_MODEL = "fusion"

#: Options whose default changed after models were shipped, as ``{model: {option: (old, current)}}``: a model
#: card that does not name the option was trained with ``old``. Training writes the value it used into every
#: new card (:func:`card_kwargs`), so that a card always rebuilds the network it was trained with
#: (:func:`kwargs_of_card`).
VERSIONED_OPTIONS: dict[str, dict[str, tuple]] = {
    "scatter": {"scattering": ("full", DEFAULT_VARIANT)},
    "scatter-linear": {"scattering": ("full", DEFAULT_VARIANT)},
}


def card_kwargs(name: str, kwargs: dict) -> dict:
    """The options to record in a new model card: ``kwargs`` with the current value of every versioned option."""
    return {**{k: new for k, (_, new) in VERSIONED_OPTIONS.get(name, {}).items()}, **kwargs}


def kwargs_of_card(card: dict) -> dict:
    """The options that rebuild a card's network: its ``model_kwargs``, with the old value of every versioned
    option the card does not name."""
    return {**{k: old for k, (old, _) in VERSIONED_OPTIONS.get(card["model"], {}).items()},
            **card.get("model_kwargs", {})}


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
    # with gradients enabled: a fixed front-end may otherwise take a faster path outside torch, unseen here
    with torch.enable_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 1, input_size, input_size))
    model.train(was)
    return int(fc.get_total_flops())
