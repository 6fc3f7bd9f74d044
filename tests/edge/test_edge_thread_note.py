"""``fpn-edge info``'s line on thread counts (fpn_edge.detector.thread_note), from the metadata alone."""
from fpn_edge.detector import Detector, thread_note


def _meta(labels, **nms):
    return {"task": "detection", "labels": labels, "output": "postprocess",
            "box_coder": {"scale_factors": [10.0, 10.0, 5.0, 5.0]},
            "nms": {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 20,
                    "max_detections_per_class": 10, **nms}}


def test_new_exports_are_thread_safe():
    assert thread_note(_meta(list("abcde"), thread_safe=True)) == "threads  any count gives the same detections"
    assert thread_note(dict(_meta(list("abcde")), output="raw")).endswith("same detections")


def test_old_exports_name_the_affected_thread_counts():
    line = thread_note(_meta(list("abcde")))          # no thread_safe key: exported before the fix
    assert "NOT thread-safe" in line and "1 thread or >= 5" in line and "T = 2..4" in line
    assert "NOT" in thread_note(_meta(list("abcde"), thread_safe=False))
    # 1 or 2 classes in one op: no thread count reaches the skipped class
    assert "NOT" not in thread_note(_meta(["a", "b"]))


def test_info_lines_include_the_note():
    lines = Detector.describe_meta(_meta(list("abc")))
    assert lines[-1] == thread_note(_meta(list("abc"))) and "1 thread or >= 3" in lines[-1]
