"""The models shipped inside the package load by name, have the right classes and an epsilon within their name's budget."""
from __future__ import annotations

import re

import numpy as np
import pytest

from privfer.models.io import DEFAULT_SHIPPED, WEIGHTS_DIR, load_model, shipped_models
from privfer.taxonomy import CLASSES, CLASSES_7

EXPECTED = {
    "fer2013-nonprivate": CLASSES_7,
    "fer2013-dp8": CLASSES_7,
    "fer2013-public10-dp8": CLASSES_7,
    "ferplus-dp8": CLASSES,
    "ferplus-dp8-facemesh": CLASSES,  # an accurate option: CenterFace, Face Mesh and ONet features
    "ferplus-dp8-attn": CLASSES,  # the most accurate: the same and the attention mesh's lips and eye features
    "ferplus-dp8-scatter": CLASSES,  # the fast option: scattering features, 23 MFLOPs per face against the default's 821
}


def test_all_expected_models_are_shipped():
    assert set(EXPECTED) <= set(shipped_models())
    assert DEFAULT_SHIPPED in shipped_models()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_model_loads_with_classes_and_budget(name):
    m = load_model(name)
    assert m.classes == EXPECTED[name]
    card = m.card
    budget = re.search(r"dp(\d+)(?:-|$)", name)
    if budget:
        assert card["epsilon_target"] == float(budget.group(1))
        assert 0 < card["epsilon_spent"] <= float(budget.group(1))
        assert card["delta"] == 1e-5
        assert card["private_data"]["n"] > 0
        # validation (selection, calibration) without the private training images it shares with them
        assert card["val_data"]["private_overlap_dropped"] > 0
        assert card["calibration_version"] == 2  # offsets move labels only: probabilities stay calibrated
    else:
        assert card["epsilon_spent"] is None
    if "public10" in name:
        assert card["public_data"]["n"] > 0 and card["public_data"]["n"] < card["private_data"]["n"]
    assert 0 < card["temperature"] and 0 < card["negative_threshold"] < 1
    assert (WEIGHTS_DIR / f"{name}.safetensors").stat().st_size < 5 * 2**20
    p = m.probs(np.full((2, 48, 48), 128, np.uint8))
    assert p.shape == (2, len(EXPECTED[name])) and np.allclose(p.sum(1), 1, atol=1e-5)
