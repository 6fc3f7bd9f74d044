"""Anchor generation: hand-computed anchors, ordering, counts on non-square canvases."""
import math

import numpy as np
import pytest

from keras_fpn.ops.anchors import (anchors_per_level, feature_map_size, generate_anchors,
                                   num_anchors_per_location)

RATIOS = (0.5, 1.0, 2.0)


def _anchors_64x96():
    # P3: 8 x 12 cells, P4: 4 x 6 cells; 2 scales x 3 ratios = 6 anchors per cell.
    return generate_anchors((64, 96), 3, 4, anchor_scale=4, scales_per_octave=2, aspect_ratios=RATIOS)


def test_first_p3_anchor_by_hand():
    anchors = _anchors_64x96()
    # Cell (0, 0) of P3 (stride 8): centre (4, 4) px; scale 1, ratio 0.5:
    # h = 32 * sqrt(0.5) = 22.627417, w = 32 / sqrt(0.5) = 45.254834.
    expected = [(4 - 11.3137085) / 64, (4 - 22.627417) / 96,
                (4 + 11.3137085) / 64, (4 + 22.627417) / 96]
    np.testing.assert_allclose(anchors[0], expected, atol=1e-6)
    np.testing.assert_allclose(anchors[0], [-0.1142767, -0.1940356, 0.2392767, 0.2773689], atol=1e-6)


def test_p3_anchor_order_scale_then_ratio():
    anchors = _anchors_64x96()
    # Row 1, column 2, scale index 1 (2**0.5), ratio 2.0: index (1*12 + 2)*6 + 1*3 + 2 = 89.
    # Centre (12, 20) px; h = 32 * sqrt(2) * sqrt(2) = 64, w = 32 * sqrt(2) / sqrt(2) = 32.
    np.testing.assert_allclose(anchors[89], [(12 - 32) / 64, (20 - 16) / 96, (12 + 32) / 64, (20 + 16) / 96],
                               atol=1e-6)
    # Next anchor: row 1, column 3, scale 1, ratio 0.5 (the next location starts again).
    h, w = 32 * math.sqrt(0.5), 32 / math.sqrt(0.5)
    np.testing.assert_allclose(anchors[90], [(12 - h / 2) / 64, (28 - w / 2) / 96,
                                             (12 + h / 2) / 64, (28 + w / 2) / 96], atol=1e-6)


def test_p4_anchor_on_non_square_canvas_not_clipped():
    anchors = _anchors_64x96()
    # P3 has 8*12*6 = 576 anchors. P4 (stride 16, base 64) row 3, column 5, scale 1,
    # ratio 1.0: index 576 + (3*6 + 5)*6 + 1 = 715, centre (56, 88) px, 64 x 64 px.
    np.testing.assert_allclose(anchors[715], [0.375, 56 / 96, 1.375, 1.25], atol=1e-6)
    assert anchors.shape == (576 + 4 * 6 * 6, 4)
    assert anchors.dtype == np.float32


def test_counts_for_320x448_retinanet():
    # ceil sizes: P3 40x56, P4 20x28, P5 10x14, P6 5x7, P7 3x4 (320/128 = 2.5 -> 3, 448/128 = 3.5 -> 4).
    expected_cells = 40 * 56 + 20 * 28 + 10 * 14 + 5 * 7 + 3 * 4
    anchors = generate_anchors((320, 448), 3, 7, 4, 3, RATIOS)
    assert anchors.shape == (expected_cells * 9, 4) == (26883, 4)
    per_level = anchors_per_level((320, 448), 3, 7, 3, RATIOS)
    assert list(per_level) == ["P3", "P4", "P5", "P6", "P7"]
    assert per_level["P7"] == 3 * 4 * 9
    assert sum(per_level.values()) == len(anchors)


def test_feature_map_size_and_per_location():
    assert feature_map_size((100, 70), 3) == (13, 9)
    assert feature_map_size((64, 96), 5) == (2, 3)
    assert num_anchors_per_location(3, RATIOS) == 9
    assert num_anchors_per_location(1, (1.0,)) == 1


def test_centres_and_sizes_all_levels():
    anchors = generate_anchors((128, 64), 3, 5, 4, 3, RATIOS)
    centre_y = (anchors[:, 0] + anchors[:, 2]) / 2 * 128
    centre_x = (anchors[:, 1] + anchors[:, 3]) / 2 * 64
    start = 0
    for level in (3, 4, 5):
        rows, cols = 128 >> level, 64 >> level
        n = rows * cols * 9
        cy = centre_y[start:start + n].reshape(rows, cols, 9)
        cx = centre_x[start:start + n].reshape(rows, cols, 9)
        np.testing.assert_allclose(cy[:, 0, 0], (np.arange(rows) + 0.5) * 2 ** level, atol=1e-4)
        np.testing.assert_allclose(cx[0, :, 0], (np.arange(cols) + 0.5) * 2 ** level, atol=1e-4)
        # Square anchors (ratio 1) of the three scales: side = 4 * 2**l * 2**(k/3).
        sides = (anchors[start:start + 9, 2] - anchors[start:start + 9, 0]) * 128
        np.testing.assert_allclose(sides[[1, 4, 7]], [4 * 2 ** level * 2 ** (k / 3) for k in range(3)], rtol=1e-5)
        start += n
    assert start == len(anchors)


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        generate_anchors((64,), 3, 4, 4, 3, RATIOS)
    with pytest.raises(ValueError, match="min_level"):
        generate_anchors((64, 64), 5, 3, 4, 3, RATIOS)
    with pytest.raises(ValueError, match="aspect"):
        generate_anchors((64, 64), 3, 4, 4, 3, ())


# ---------------------------------------------------------------- single-level necks (model.neck)

def _demo_model_cfg(neck):
    """The ablation configs' anchor keys (P3-P6, scale 4, 2 scales/octave, ratio 1) on 256x320."""
    from keras_fpn.config import ModelConfig

    from keras_fpn.config import AnchorConfig, NeckConfig

    return ModelConfig(image_size=(256, 320), neck=NeckConfig(kind=neck, min_level=3, max_level=6),
                       anchors=AnchorConfig(scale=4.0, scales_per_octave=2, aspect_ratios=(1.0,)))


@pytest.mark.parametrize("neck, per_location, cells, total", [
    # P3 32x40, P4 16x20, P5 8x10, P6 4x5 cells; 2 anchors per cell on each level.
    ("fpn", 2, 32 * 40 + 16 * 20 + 8 * 10 + 4 * 5, 3400),
    # One level carries the 4 octaves x 2 scales = 8 anchors per cell.
    ("c5_only", 8, 8 * 10, 640),
    ("finest_no_topdown", 8, 32 * 40, 10240),
])
def test_model_anchor_counts_per_neck_non_square(neck, per_location, cells, total):
    from keras_fpn.ops.anchors import model_anchors, model_anchors_per_location

    cfg = _demo_model_cfg(neck)
    assert model_anchors_per_location(cfg) == per_location
    anchors = model_anchors(cfg)
    assert anchors.shape == (cells * per_location, 4) == (total, 4)
    level = {"fpn": None, "c5_only": 5, "finest_no_topdown": 3}[neck]
    per_level = anchors_per_level((256, 320), 3, 6, 2, (1.0,), on_level=level)
    assert list(per_level) == ([f"P{l}" for l in (3, 4, 5, 6)] if level is None else [f"P{level}"])
    assert sum(per_level.values()) == total


def test_single_level_anchors_by_hand_c5():
    # P5 (stride 32) of 256x320: 8 x 10 cells, 8 anchors each: sides 32 * 2**(k/2), k = 0..7
    # (= 4 * 2**l * 2**(j/2) for l = 3..6, j = 0, 1), all centred on the cell.
    anchors = generate_anchors((256, 320), 3, 6, 4.0, 2, (1.0,), on_level=5)
    # Row 2, column 3: centre (80, 112) px; anchor 7 (octave P6, scale 2**0.5): side 256 * sqrt(2).
    i = (2 * 10 + 3) * 8 + 7
    half = 128 * math.sqrt(2)
    np.testing.assert_allclose(anchors[i], [(80 - half) / 256, (112 - half) / 320,
                                            (80 + half) / 256, (112 + half) / 320], atol=1e-6)
    sides = (anchors[:8, 2] - anchors[:8, 0]) * 256
    np.testing.assert_allclose(sides, [32 * 2 ** (k / 2) for k in range(8)], rtol=1e-6)


@pytest.mark.parametrize("on_level", [3, 5])
def test_single_level_sizes_equal_the_pyramid_sizes(on_level):
    # Same anchor shapes as P3..P7 (9 per level), just all on one grid, ordered by size then ratio.
    pyramid = generate_anchors((128, 192), 3, 7, 4, 3, RATIOS)
    single = generate_anchors((128, 192), 3, 7, 4, 3, RATIOS, on_level=on_level)
    rows, cols = 128 >> on_level, 192 >> on_level
    assert single.shape == (rows * cols * 45, 4)

    def shapes(a):
        return np.round(np.stack([(a[:, 2] - a[:, 0]) * 128, (a[:, 3] - a[:, 1]) * 192], 1), 3)

    per_level_first_cell, start = [], 0
    for level in range(3, 8):
        per_level_first_cell.append(shapes(pyramid[start:start + 9]))
        start += (-(-128 // 2 ** level)) * (-(-192 // 2 ** level)) * 9
    np.testing.assert_allclose(shapes(single[:45]), np.concatenate(per_level_first_cell), atol=2e-3)
    centres = (single[:, :2] + single[:, 2:]) / 2 * [128, 192]
    np.testing.assert_allclose(centres[:45], np.full((45, 2), 2 ** on_level / 2), atol=1e-4)


def test_on_level_of_a_one_level_range_is_the_plain_level():
    plain = generate_anchors((64, 96), 4, 4, 4, 3, RATIOS)
    np.testing.assert_array_equal(generate_anchors((64, 96), 4, 4, 4, 3, RATIOS, on_level=4), plain)
    # Level 3's anchors on the stride-32 grid: same sizes as P3, fewer cells.
    moved = generate_anchors((64, 96), 3, 3, 4, 3, RATIOS, on_level=5)
    np.testing.assert_allclose((moved[:9, 2:] - moved[:9, :2]),
                               (generate_anchors((64, 96), 3, 3, 4, 3, RATIOS)[:9, 2:]
                                - generate_anchors((64, 96), 3, 3, 4, 3, RATIOS)[:9, :2]), atol=1e-6)
    assert moved.shape == (2 * 3 * 9, 4)
