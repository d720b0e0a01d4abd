"""Measuring explanations. Localisation against ground-truth masks for now."""

from camlens.metrics.localisation import energy_pointing_game, iou, pointing_game

__all__ = ["energy_pointing_game", "iou", "pointing_game"]
