"""Explanations of trained classifiers: Grad-CAM maps and lesion localization scores.

* :mod:`.gradcam` — Grad-CAM of the encoder's deepest map, exact for every registered encoder;
* :mod:`.localization` — pointing game, Dice and IoU of the maps against lesion masks, per case,
  with the CSV and overlay figure a run logs.

The engine calls it at the end of a classification run (``localization: true``); scripts and
the report read its outputs. It sits below the engine and above transforms and models.
"""
from .gradcam import explained_class, gradcam_maps, target_layer
from .localization import LocalizationCase, localize, plot_overlays, score_map, summarize, write_localization_csv

__all__ = ["LocalizationCase", "explained_class", "gradcam_maps", "localize", "plot_overlays", "score_map",
           "summarize", "target_layer", "write_localization_csv"]
