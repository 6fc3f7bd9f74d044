"""Segmentation metrics on hand-computed cases: confusion matrix, IoU / mIoU, boundary F-score."""
import numpy as np
import pytest

from keras_fpn.evaluation.segmentation import (SegmentationMetrics, boundary_counts, boundary_fscore, class_boundaries,
                                      confusion_matrix, iou_from_confusion)

IGN = 255


def test_confusion_and_iou_by_hand():
    gt = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 2, IGN, IGN]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, 2],
                     [2, 0, 0, 1]])   # the last two pixels are ignored
    cm = confusion_matrix(gt, pred, 3)
    np.testing.assert_array_equal(cm, [[3, 1, 0],    # gt 0: 3 right, 1 -> class 1
                                       [0, 3, 1],    # gt 1: 3 right, 1 -> class 2
                                       [1, 0, 1]])   # gt 2: 1 -> class 0, 1 right
    # IoU_0 = 3 / (4 + 4 - 3) = 0.6; IoU_1 = 3 / (4 + 4 - 3) = 0.6; IoU_2 = 1 / (2 + 2 - 1) = 1/3
    np.testing.assert_allclose(iou_from_confusion(cm), [0.6, 0.6, 1 / 3])
    m = SegmentationMetrics(["bg", "a", "b"], tolerance=0)
    m.update(gt, pred)
    r = m.result()
    assert r["mIoU"] == pytest.approx((0.6 + 0.6 + 1 / 3) / 3)
    assert r["pixel_accuracy"] == pytest.approx(7 / 10)
    assert r["per_class"]["b"]["IoU"] == pytest.approx(1 / 3)


def test_absent_class_is_left_out_of_the_mean():
    gt = np.array([[0, 1], [0, 1]])
    pred = np.array([[0, 1], [1, 1]])
    iou = iou_from_confusion(confusion_matrix(gt, pred, 3))
    np.testing.assert_allclose(iou[:2], [1 / 2, 2 / 3])
    assert np.isnan(iou[2])
    m = SegmentationMetrics(["bg", "a", "b"])
    m.update(gt, pred)
    assert m.result()["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m.result()["per_class"]["b"]["IoU"] is None


def test_bad_prediction_ids_are_an_error():
    with pytest.raises(ValueError, match="class ids must be in 0..2"):
        confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 3), 3)


def _squares(shift: int) -> tuple:
    """8x8 maps: class 1 square rows 2..5 x cols 2..5 (gt) and the same shifted right by ``shift``."""
    gt = np.zeros((8, 8), np.uint8)
    gt[2:6, 2:6] = 1
    pred = np.zeros((8, 8), np.uint8)
    pred[2:6, 2 + shift:6 + shift] = 1
    return gt, pred


def test_class_boundaries_are_inner_4_neighbour_edges():
    gt, _ = _squares(0)
    edge, lab = class_boundaries(gt, np.ones_like(gt, bool))
    ring = np.zeros((8, 8), bool)
    ring[2:6, 2:6] = True
    ring[3:5, 3:5] = False                       # the 4x4 square's 12 perimeter pixels
    np.testing.assert_array_equal(edge & (lab == 1), ring)
    # background boundary: the 16 pixels 4-adjacent to the square (corners excluded)
    assert np.count_nonzero(edge & (lab == 0)) == 16


def test_boundary_fscore_by_hand_shifted_square():
    gt, pred = _squares(1)
    # tolerance 0: class 1 perimeters (12 px each) share rows 2 and 5 at cols 3..5 = 6 px
    # -> P = R = 6/12, F = 0.5; background edges (16 px each) share rows 1 and 6 at cols 3..5
    # = 6 px -> P = R = 6/16, F = 0.375
    counts = boundary_counts(gt, pred, 2, tolerance=0)
    np.testing.assert_array_equal(counts, [[6, 16, 6, 16], [6, 12, 6, 12]])
    np.testing.assert_allclose(boundary_fscore(counts), [0.375, 0.5])
    # tolerance 1: every boundary pixel has a partner at distance <= 1
    np.testing.assert_allclose(boundary_fscore(boundary_counts(gt, pred, 2, tolerance=1)), [1.0, 1.0])
    m = SegmentationMetrics(["bg", "sq"], tolerance=0)
    m.update(gt, pred)
    assert m.result()["boundary_F"] == pytest.approx((0.375 + 0.5) / 2)


def test_boundary_missing_prediction_scores_zero_and_ignore_makes_no_boundary():
    gt, _ = _squares(0)
    pred = np.zeros_like(gt)
    f = boundary_fscore(boundary_counts(gt, pred, 2, tolerance=2))
    np.testing.assert_allclose(f, [0.0, 0.0])     # boundaries in gt, none predicted: recall 0
    # The square's right half is ignore: the edges next to the ignore region do not count, and a
    # prediction that differs only inside the ignore region is perfect.
    gt_ign = gt.copy()
    gt_ign[:, 4:] = np.where(gt[:, 4:] == 1, IGN, 0)
    gt_ign[:, 6:] = IGN
    pred = gt.copy()
    pred[:, 6:] = 1
    c = boundary_counts(gt_ign, pred, 2, tolerance=0)
    np.testing.assert_allclose(boundary_fscore(c), [1.0, 1.0])
    # remaining class-1 edge: cols 2..3 of rows 2..5 minus the interior pixels next to ignore
    assert c[1, 3] == 6


def test_metrics_accumulate_over_images():
    gt, pred = _squares(1)
    m = SegmentationMetrics(["bg", "sq"], tolerance=0)
    m.update(gt, pred)
    m.update(gt, gt)
    r = m.result()
    # summed counts: class 1 (6 + 12) / (12 + 12) both ways -> F = 0.75
    assert r["per_class"]["sq"]["boundary_F"] == pytest.approx(0.75)
    assert r["num_images"] == 2
