"""What a propagation run writes: label PNGs, colourised maps, error maps, a video, metrics.

The definitions live in `utils/label_outputs.py`, one layer down, because the Semantic-NeRF
baseline (training/) writes the same files and metrics and training never imports propagation;
this module keeps propagation's names.
"""
from utils.label_outputs import (class_names, finish_metrics, scaled_labels, seed_class_confusion,  # noqa: F401
                                 summary_line, valid_colour_map, write_view_outputs)
