"""``task: detection``: FPN + RetinaNet / SSD-FPNLite head, anchors, focal + box losses, COCO AP.

Model outputs ``box_deltas [B, A, 4]`` and ``class_logits [B, A, C]`` (the
conventions in ``keras_fpn.ops``); the export ends in the
``TFLite_Detection_PostProcess`` op (``fpn_export.detection``) and runs in
``fpn_edge.Detector``.
"""
from __future__ import annotations

from keras_fpn.tasks.base import Task, pipeline_options


def matcher_options(cfg) -> dict:
    """``build_detection_dataset``'s anchor and matcher keywords of a ``Config``."""
    from keras_fpn.ops.anchors import model_anchors, model_level_sizes

    t = cfg.train
    return dict(anchors=model_anchors(cfg.model), matcher=t.matcher, positive_iou=t.positive_iou,
                negative_iou=t.negative_iou, level_sizes=model_level_sizes(cfg.model),
                atss_top_k=t.atss_top_k, scale_factors=tuple(cfg.model.anchors.box_scale_factors))


class DetectionTask(Task):
    name = "detection"
    checkpoint_metrics = ("val_AP", "val_loss")
    can_predict = True

    def build_model(self, model_cfg, *, ns, batch_size, backbone_weights):
        from keras_fpn.models.detector import build_detector

        return build_detector(model_cfg, ns=ns, batch_size=batch_size, backbone_weights=backbone_weights)

    def pipeline(self, cfg, dataset, *, training, batch_size=None, seed=None, deterministic=False):
        from keras_fpn.data.pipeline import build_detection_dataset

        return build_detection_dataset(dataset, **pipeline_options(cfg, training, batch_size, seed, deterministic),
                                       **matcher_options(cfg))

    def losses(self, cfg):
        from keras_fpn.ops.losses import BoxLoss, FocalLoss

        t = cfg.train
        return ({"box_deltas": BoxLoss(delta=t.box_loss_delta),
                 "class_logits": FocalLoss(alpha=t.focal_alpha, gamma=t.focal_gamma)},
                {"box_deltas": t.box_loss_weight, "class_logits": 1.0})

    def epoch_evaluator(self, val_dataset, cfg, *, batch_size=8):
        from keras_fpn.evaluation.detection import coco_evaluate, detection_function, predict_dataset

        traced = {}

        def evaluate(model, epoch):
            if "detect" not in traced:  # traced once per training run, not once per evaluation
                traced["detect"] = detection_function(model, cfg.model)
            results = predict_dataset(model, val_dataset, cfg.model, batch_size=batch_size, detect=traced["detect"])
            metrics = coco_evaluate(val_dataset, results)
            print(f"\nepoch {epoch + 1}: val AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  "
                  f"AP_small {metrics['AP_small']:.4f}")
            return metrics, {"val_AP": metrics["AP"], "val_AP50": metrics["AP50"]}

        return ("val_AP", "val_AP50"), evaluate

    def evaluate(self, model, dataset, cfg, *, progress=False, boundary_tolerance=None):
        from keras_fpn.evaluation.detection import coco_evaluate, predict_dataset

        return coco_evaluate(dataset, predict_dataset(model, dataset, cfg.model, progress=progress))

    def format_metrics(self, metrics):
        from keras_fpn.evaluation.detection import format_metrics

        return format_metrics(metrics)

    def summary(self, metrics):
        return f"best (epoch {metrics['epoch']}): val AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}"

    def export(self, model, config, labels, mode, **options):
        from fpn_export.detection import export_detector

        return export_detector(model, config, labels, mode, **options)

    @property
    def report(self):
        from keras_fpn.compare.detection import REPORT

        return REPORT

    def predict(self, run, paths, out, *, threshold, max_detections, which, on_error=None):
        from keras_fpn.training.predict import predict_images

        return predict_images(run, paths, out, threshold=threshold, max_detections=max_detections, which=which,
                              on_error=on_error)


DETECTION = DetectionTask()
