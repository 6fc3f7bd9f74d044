"""The schedule follows the data: ``train.budget`` (total steps) -> ``train.epochs`` and ``steps_per_epoch``.

With ``train.budget: N`` a user says how long to train, not how the steps are cut into
epochs. An epoch stays one pass over the training set (``len // batch_size`` steps, or
``train.steps_per_epoch`` when given); the number of epochs is the budget divided by it
rounded to the nearest whole number (at least 1): ``epochs x steps_per_epoch`` is the budget
within half an epoch (a budget shorter than one pass is one epoch of that many steps).
Resolving a resolved config again gives the same numbers. ``warmup_epochs``, ``eval_every`` and ``freeze_backbone_epochs`` keep counting epochs.
Without a budget the config is used as written. The resolved numbers are what the run
directory records.

Examples (batch 16): raccoon (160 images, 10 steps a pass), budget 300 -> 30 epochs x 10;
coco128 split 100 / 28 (6 steps a pass), budget 300 -> 50 epochs x 6.
"""
from __future__ import annotations

import dataclasses


def budget_schedule(budget: int, num_images: int, batch_size: int, steps_per_epoch: int | None = None) -> tuple:
    """``(epochs, steps_per_epoch)`` spreading ``budget`` steps over passes of the data."""
    per_pass = min(steps_per_epoch or max(num_images // batch_size, 1), budget)
    return max(1, round(budget / per_pass)), per_pass


def with_schedule(cfg, num_images: int):
    """``cfg`` with ``train.epochs`` / ``train.steps_per_epoch`` from ``train.budget`` (unchanged without one)."""
    t = cfg.train
    if t.budget is None:
        return cfg
    epochs, steps = budget_schedule(t.budget, num_images, t.batch_size, t.steps_per_epoch)
    return dataclasses.replace(cfg, train=dataclasses.replace(t, epochs=epochs, steps_per_epoch=steps))
