"""Measuring explanations: localisation, faithfulness, sanity, complexity and robustness.

- Localisation against masks or boxes: :func:`pointing_game`, :func:`energy_pointing_game`,
  :func:`iou`, :func:`box_localisation`.
- Faithfulness (the model re-run on changed images, batched, no-grad): :func:`average_drop`,
  :func:`increase_in_confidence`, :func:`win_rate`, :func:`deletion`, :func:`insertion`,
  :func:`road`.
- Sanity (Adebayo et al. 2018, on a copy of the model): :func:`sanity_randomization`,
  :func:`sanity_random_logit`, with :func:`spearman` and :func:`ssim`.
- Complexity of the maps alone: :func:`complexity` (entropy, Bhatt et al. 2020),
  :func:`sparseness` (Gini index, Chalasani et al. 2020).
- ADCC (Poppi et al. 2021): :func:`coherency`, :func:`adcc`, :func:`adcc_parts`.
- Robustness: :func:`max_sensitivity` (Yeh et al. 2019).
"""

from camlens.metrics.adcc import Adcc, adcc, adcc_parts, coherency
from camlens.metrics.complexity import complexity, sparseness
from camlens.metrics.faithfulness import (
    Confidence,
    Curve,
    average_drop,
    deletion,
    gaussian_blur,
    increase_in_confidence,
    insertion,
    masked_confidence,
    win_rate,
)
from camlens.metrics.localisation import (
    box_localisation,
    boxes_to_masks,
    component_boxes,
    connected_components,
    energy_pointing_game,
    iou,
    largest_component_box,
    pointing_game,
)
from camlens.metrics.perturbation import black
from camlens.metrics.remove_debias import Road, noisy_linear_impute, road
from camlens.metrics.robustness import max_sensitivity
from camlens.metrics.sanity import (
    Sanity,
    randomization_units,
    sanity_random_logit,
    sanity_randomization,
)
from camlens.metrics.similarity import spearman, ssim

__all__ = [
    "Adcc",
    "Confidence",
    "Curve",
    "Road",
    "Sanity",
    "adcc",
    "adcc_parts",
    "average_drop",
    "black",
    "box_localisation",
    "boxes_to_masks",
    "coherency",
    "complexity",
    "component_boxes",
    "connected_components",
    "deletion",
    "energy_pointing_game",
    "gaussian_blur",
    "increase_in_confidence",
    "insertion",
    "iou",
    "largest_component_box",
    "masked_confidence",
    "max_sensitivity",
    "noisy_linear_impute",
    "pointing_game",
    "randomization_units",
    "road",
    "sanity_random_logit",
    "sanity_randomization",
    "sparseness",
    "spearman",
    "ssim",
    "win_rate",
]
