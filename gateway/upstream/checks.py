"""The gateway's checks of each model's answer, before anyone reads it.

Thin adapters from :class:`gateway.upstream.client.ModelClient`'s ``check`` hook to
:mod:`shared.contract`'s tensor and range checks, with the shapes of the request.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared import contract
from shared.contract import ClassifierFacts, DetectorFacts


def check_classifier_answer(
    outputs: Mapping[str, np.ndarray], facts: ClassifierFacts, inputs: Mapping[str, np.ndarray]
) -> None:
    """The classifier's answer fits the images sent (ContractError otherwise)."""
    contract.check_classifier_outputs(outputs, facts, images=inputs[contract.IMAGE.name].shape[0])


def check_detector_answer(
    outputs: Mapping[str, np.ndarray], facts: DetectorFacts, inputs: Mapping[str, np.ndarray]
) -> None:
    """The detector's answer fits the images sent, boxes inside them (ContractError otherwise)."""
    images, _, height, width = inputs[contract.IMAGE.name].shape
    contract.check_detector_outputs(outputs, facts, images=images, height=height, width=width)
