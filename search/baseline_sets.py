"""The hand-picked baseline recipes (`--baselines SET`), as data: `search.config` checks the
option against them without importing what trains them (`search.baselines`)."""

from __future__ import annotations

# The hand-picked recipes of the reference report on Tiny ImageNet. Each starts from "no
# regularization" and the study's fixed settings; patience is the study's default, so the
# baselines get the same early stopping (best weights restored) as the searched trials. The
# reference augmentation (flips, brightness 0.4, contrast 0.8-1.2, saturation 0.7-1.3) is our
# magnitude 1.0, which also adds small rotations, translations and zooms.
REFERENCE: dict[str, dict[str, float]] = {
    "none": {},
    "l2": {"l2": 1e-4},
    "augmentation": {"augment": 1.0},
    "dropout_0.25": {"dropout": 0.25},
    "l2_1.5e-4_dropout_0.2": {"l2": 1.5e-4, "dropout": 0.2},
}
# What modern training recipes use instead, each alone and then together (the DeiT/timm
# bundle, scaled to small models: mixup 0.2 rather than 0.8), beside the reference five.
# Keras' own RandAugment and AugMix turn XLA off for the whole model (they contain
# RandomRotation/RandomShear/RandomTranslation), so the augmentation is regsearch's one-magnitude
# RandomAugment at 1.0: RandAugment's idea of one magnitude for every operation.
MODERN: dict[str, dict[str, float]] = {
    "adamw_0.05": {"weight_decay": 0.05},
    "label_smoothing_0.1": {"label_smoothing": 0.1},
    "mixup_0.2": {"mixup": 0.2},
    "cutmix_1.0": {"cutmix": 1.0},
    "adamw_0.05_label_smoothing_0.1_mixup_0.2_augmentation": {
        "weight_decay": 0.05, "label_smoothing": 0.1, "mixup": 0.2, "augment": 1.0},
}
BASELINE_SETS: dict[str, dict[str, dict[str, float]]] = {
    "reference": REFERENCE,
    "modern": {**REFERENCE, **MODERN},
}
