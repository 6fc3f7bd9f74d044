"""Instrumented short training runs: why does a recipe sit on the class-loss plateau?

Trains the detector of a config with the same losses, optimizer and pipeline as
``keras-fpn train`` (a hand-written step, so that it can look inside) and logs every
``--every`` steps: class / box loss (that step's and the mean since the last row), positives per image, the sigmoid score of the
true class at positive anchors, the largest score at background anchors, the std of
the class-head input features, and the gradient norm of each head / neck / backbone
group. One JSON line per logged step, to stdout and ``--out``.

    python -m benchmarks.recipes_probe CONFIG [--set key=value ...] --steps 120 --out probe.jsonl
"""
from __future__ import annotations

import argparse
import json
import time


def _groups(model):
    """Variable groups whose gradient norms are logged: name -> [variable index]."""
    groups = {}
    for i, v in enumerate(model.trainable_variables):
        path = v.path
        if "head_cls_logits" in path:
            key = "cls_pred"
        elif "head_box_deltas" in path:
            key = "box_pred"
        elif "head_" in path:
            key = "head_tower"
        elif "fpn_" in path:
            key = "fpn"
        else:
            key = "backbone"
        groups.setdefault(key, []).append(i)
    return groups


def probe(cfg, steps: int, every: int, out: str | None) -> list:
    import keras
    import tensorflow as tf

    from keras_fpn.data.splits import load_datasets
    from keras_fpn.models.factory import build_model
    from keras_fpn.rundir import with_num_classes
    from keras_fpn.tasks import get_task
    from keras_fpn.training.optimizer import build_optimizer

    task = get_task(cfg.model.task)
    keras.utils.set_random_seed(cfg.train.seed)
    train_set, _ = load_datasets(cfg)
    cfg = with_num_classes(cfg, train_set.label_map.num_classes)
    per_epoch = cfg.train.steps_per_epoch or max(len(train_set) // cfg.train.batch_size, 1)
    data = iter(task.pipeline(cfg, train_set, training=True).repeat())
    model = build_model(cfg.model)
    (losses, weights) = task.losses(cfg)
    optimizer = build_optimizer(cfg, per_epoch)
    groups = _groups(model)
    # the class predictor's input: the last tower activation of the first level
    feature_layer = next((l for l in reversed(model.layers) if "relu" in l.name and l.name.startswith("head_")
                          and ("cls" in l.name or "tower" in l.name)), None)
    probe_model = keras.Model(model.input, [model.output, feature_layer.output]) if feature_layer else None

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            (pred, feat) = probe_model(x, training=True)
            cls = losses["class_logits"](y["class_logits"], pred["class_logits"])
            box = losses["box_deltas"](y["box_deltas"], pred["box_deltas"])
            total = weights["class_logits"] * cls + weights["box_deltas"] * box
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        norms = {k: tf.linalg.global_norm([grads[i] for i in idx]) for k, idx in groups.items()}
        labels = tf.cast(tf.round(y["class_logits"]), tf.int32)
        scores = tf.sigmoid(pred["class_logits"])
        pos = labels >= 0
        true_score = tf.gather(scores, tf.maximum(labels, 0), batch_dims=2)
        npos = tf.reduce_sum(tf.cast(pos, tf.float32))
        stats = {"cls": cls, "box": box, "pos_per_image": npos / tf.cast(tf.shape(labels)[0], tf.float32),
                 "true_score_pos": tf.reduce_sum(tf.where(pos, true_score, 0.0)) / tf.maximum(npos, 1.0),
                 "max_score_bg": tf.reduce_max(tf.where(labels == -1, tf.reduce_max(scores, -1), 0.0)),
                 "max_score_pos": tf.reduce_max(tf.where(pos, true_score, 0.0)),
                 "feat_std": tf.math.reduce_std(feat),
                 "logit_std": tf.math.reduce_std(pred["class_logits"])}
        return stats, norms

    rows = []
    window = []
    started = time.time()
    for i in range(1, steps + 1):
        x, y = next(data)
        stats, norms = step(x, y)
        window.append((float(stats["cls"]), float(stats["box"])))
        if i % every == 0 or i == 1:
            row = {"step": i, "seconds": round(time.time() - started, 1),
                   "lr": float(optimizer.learning_rate.numpy() if hasattr(optimizer.learning_rate, "numpy")
                               else optimizer.learning_rate)}
            row.update({k: round(float(v), 5) for k, v in stats.items()})
            row["cls_mean"] = round(sum(c for c, _ in window) / len(window), 5)   # since the last row
            row["box_mean"] = round(sum(b for _, b in window) / len(window), 5)
            window = []
            row.update({f"g_{k}": round(float(v), 6) for k, v in norms.items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
            if out:
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


def curves_markdown(folder) -> str:
    """A markdown table per ``NAME_before.jsonl`` / ``NAME_after.jsonl`` pair in ``folder``: the class
    loss (mean of the 10 steps up to each row; step 1 alone), the class predictor's input std
    and gradient norm, and the backbone's gradient norm, before and after."""
    from pathlib import Path

    folder = Path(folder)
    out = []
    for before in sorted(folder.glob("*_before.jsonl")):
        name = before.name[:-len("_before.jsonl")]
        rows = {v: [json.loads(line) for line in (folder / f"{name}_{v}.jsonl").read_text().splitlines()]
                for v in ("before", "after")}
        header = ("| step | class loss before | after | feature std before | after | grad cls predictor before "
                  "| after | grad backbone before | after |")
        out += [f"### {name}", "", header, "|---" * 9 + "|"]
        for b, a in zip(rows["before"], rows["after"]):
            out.append(f"| {b['step']} | {b.get('cls_mean', b['cls']):.3f} | {a.get('cls_mean', a['cls']):.3f} | "
                       f"{b['feat_std']:.3f} | {a['feat_std']:.3f} | {b['g_cls_pred']:.3f} | {a['g_cls_pred']:.3f} | "
                       f"{b['g_backbone']:.2g} | {a['g_backbone']:.2g} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    from keras_fpn.config import Config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?")
    p.add_argument("--report", metavar="FOLDER", help="print the before/after tables of FOLDER's *.jsonl and exit")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.report:
        print(curves_markdown(a.report))
        return
    cfg = Config.from_yaml(a.config, a.set)
    probe(cfg, a.steps, a.every, a.out)


if __name__ == "__main__":
    main()
