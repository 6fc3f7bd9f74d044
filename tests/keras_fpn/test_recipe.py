"""train.budget: the schedule follows the data (epochs x steps per epoch from the training set's size)."""
import pytest

from keras_fpn.config import ConfigError, config_from_dict
from keras_fpn.training.recipe import budget_schedule, with_schedule


def test_budget_spreads_over_passes_of_the_data():
    assert budget_schedule(300, 160, 16) == (30, 10)    # raccoon
    assert budget_schedule(300, 100, 16) == (50, 6)     # coco128 100 / 28
    assert budget_schedule(304, 100, 16) == (51, 6)     # nearest whole epoch: 306 steps
    assert budget_schedule(5, 1000, 16) == (1, 5)       # less than a pass: one epoch of the budget
    assert budget_schedule(100, 3, 16) == (100, 1)      # fewer images than a batch: 1 step a pass
    assert budget_schedule(300, 160, 16, steps_per_epoch=25) == (12, 25)


def test_config_is_resolved_once_and_unchanged_without_a_budget():
    plain = config_from_dict({"train": {"epochs": 7}})
    assert with_schedule(plain, 160) is plain
    cfg = with_schedule(config_from_dict({"train": {"budget": 300, "batch_size": 16}}), 100)
    assert (cfg.train.epochs, cfg.train.steps_per_epoch, cfg.train.budget) == (50, 6, 300)
    assert with_schedule(cfg, 100) == cfg                # resolving again changes nothing


def test_budget_must_be_positive():
    with pytest.raises(ConfigError, match="train.budget must be an integer >= 1"):
        config_from_dict({"train": {"budget": 0}})
