"""The compare report's detection-change counts, on hand-made detections."""
from keras_fpn.compare.report import detection_changes, headline_table


def _det(image_id, x, y, w, h, cat, score):
    return {"image_id": image_id, "bbox": [x, y, w, h], "category_id": cat, "score": score}


def test_detection_changes_by_hand():
    ref = [_det(1, 0, 0, 100, 100, 1, 0.9),      # kept exactly
           _det(1, 200, 200, 50, 50, 1, 0.8),    # moved: IoU 45*50 / (2*2500 - 2250) = 0.818 < 0.9
           _det(1, 400, 0, 40, 40, 2, 0.7),      # changed class
           _det(2, 10, 10, 20, 20, 3, 0.6),      # lost: the variant's box is elsewhere
           _det(2, 10, 10, 20, 20, 3, 0.1)]      # not confident: ignored
    var = [_det(1, 0, 0, 100, 100, 1, 0.85),
           _det(1, 205, 200, 50, 50, 1, 0.8),
           _det(1, 400, 0, 40, 40, 1, 0.5),
           _det(2, 300, 300, 20, 20, 3, 0.6),    # new (no float counterpart)
           _det(3, 0, 0, 10, 10, 1, 0.2)]        # not confident: ignored
    assert detection_changes(ref, var) == {"reference": 4, "lost": 1, "changed_class": 1, "moved": 1, "new": 1}
    assert detection_changes(ref, ref) == {"reference": 4, "lost": 0, "changed_class": 0, "moved": 0, "new": 0}
    assert detection_changes(ref, [])["lost"] == 4
    # two classes on one box: the same-class detection is found even when listed second
    ref2 = [_det(5, 0, 0, 10, 10, 1, 0.9), _det(5, 0, 0, 10, 10, 2, 0.8)]
    assert detection_changes(ref2, list(reversed(ref2)))["changed_class"] == 0


def test_headline_table_rows():
    row = {"variant": "int8", "AP": 0.5, "AP50": 0.9, "AP_small": 0.2, "AP_medium": 0.5, "AP_large": 0.7,
           "AP_ratio": 0.98, "latency_ms_p50": 3.21, "latency_ms_p90": 4.0, "threads": 2, "size_bytes": 2_500_000,
           "changes": {"reference": 10, "lost": 1, "changed_class": 0, "moved": 2, "new": 0}}
    table = headline_table({"variants": [row]})
    assert "| int8 | 0.500 | 0.900 | 0.200 | 0.500 | 0.700 | 98.0 % | 3.2 / 4.0 | 2.50 | 1 / 0 / 2 / 0 of 10 |" in table
