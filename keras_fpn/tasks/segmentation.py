"""``task: segmentation``: FPN + Panoptic-FPN semantic head, softmax CE (+ Dice), mIoU and boundary F.

Model output ``seg_logits [B, H, W, K]`` with K = C + 1 (channel 0 =
background, ``c + 1`` = class ``c``; ``keras_fpn.models.segmentation``); the
export keeps the raw logits (``fpn_export.segmentation``) and runs in
``fpn_edge.Segmenter``.
"""
from __future__ import annotations

from keras_fpn.tasks.base import Task, pipeline_options


class SegmentationTask(Task):
    name = "segmentation"
    checkpoint_metrics = ("val_mIoU", "val_loss")
    can_predict = False
    predict_hint = ("`predict` draws detections; for a segmentation run use `keras-fpn export RUN --mode fp32` "
                    "and `fpn-edge segment MODEL IMAGE --out DIR`")

    def check_model_config(self, model_cfg):
        if model_cfg.neck.kind != "fpn":
            return (f"model.neck.kind {model_cfg.neck.kind!r} is a detection ablation; model.task "
                    f"{self.name!r} needs model.neck.kind: fpn")
        return None

    def build_model(self, model_cfg, *, ns, batch_size, backbone_weights):
        from keras_fpn.models.segmentation import build_segmenter

        return build_segmenter(model_cfg, ns=ns, batch_size=batch_size, backbone_weights=backbone_weights)

    def pipeline(self, cfg, dataset, *, training, batch_size=None, seed=None, deterministic=False):
        from keras_fpn.data.pipeline import build_segmentation_dataset

        return build_segmentation_dataset(dataset, **pipeline_options(cfg, training, batch_size, seed, deterministic),
                                          ignore_label=cfg.model.segmentation.ignore_label)

    def losses(self, cfg):
        from keras_fpn.ops.seg_losses import SegmentationLoss

        return ({"seg_logits": SegmentationLoss(ignore_label=cfg.model.segmentation.ignore_label,
                                                dice_weight=cfg.train.dice_weight)},
                {"seg_logits": 1.0})

    def epoch_evaluator(self, val_dataset, cfg, *, batch_size=8):
        from keras_fpn.evaluation.segmentation import evaluate_segmentation

        def evaluate(model, epoch):
            metrics = evaluate_segmentation(model, val_dataset, cfg.model, batch_size=batch_size)
            print(f"\nepoch {epoch + 1}: val mIoU {metrics['mIoU']:.4f}  "
                  f"boundary F@{metrics['boundary_tolerance_px']}px {metrics['boundary_F']:.4f}")
            return metrics, {"val_mIoU": metrics["mIoU"], "val_boundary_F": metrics["boundary_F"]}

        return ("val_mIoU", "val_boundary_F"), evaluate

    def evaluate(self, model, dataset, cfg, *, progress=False, boundary_tolerance=None):
        from keras_fpn.evaluation.segmentation import BOUNDARY_TOLERANCE, evaluate_segmentation

        tolerance = BOUNDARY_TOLERANCE if boundary_tolerance is None else boundary_tolerance
        return evaluate_segmentation(model, dataset, cfg.model, tolerance=tolerance, progress=progress)

    def format_metrics(self, metrics):
        from keras_fpn.evaluation.segmentation import format_seg_metrics

        return format_seg_metrics(metrics)

    def summary(self, metrics):
        return (f"best (epoch {metrics['epoch']}): val mIoU {metrics['mIoU']:.4f}  "
                f"boundary F@{metrics['boundary_tolerance_px']}px {metrics['boundary_F']:.4f}")

    def export(self, model, config, labels, mode, **options):
        from fpn_export.segmentation import export_segmenter

        return export_segmenter(model, config, labels, mode, **options)

    @property
    def report(self):
        from keras_fpn.compare.segmentation import REPORT

        return REPORT


SEGMENTATION = SegmentationTask()
