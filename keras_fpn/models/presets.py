"""Named architecture presets: the architecture keys of a ``model`` section (backbone, neck, head, anchors).

==========================  ======================================  =========================================
preset                      follows                                 what it is
==========================  ======================================  =========================================
retinanet_mobilenetv2_fpn   RetinaNet (Lin et al. 2017) on a        MobileNetV2 1.0, FPN P3-P7 width 128 (P6
                            mobile backbone, as TF Model Garden's   from C5), class/box towers 4 x 128,
                            MobileNetV2-RetinaNet                   9 anchors (3 scales x 3 ratios, scale 4), ReLU6
ssd_mobilenetv2_fpnlite     TF OD API ssd_mobilenet_v2_fpnlite_     MobileNetV2 1.0, FPNLite P3-P7 width 128
                            320x320 (depth 128, 4 tower layers,     (separable convs, BN, ReLU6, P6 from P5),
                            weight-shared depthwise predictor)      shared tower 4 x 128, 6 anchors (2 scales
                                                                    x ratios 1, 2, 0.5, scale 4)
retinanet_resnet50_fpn      RetinaNet paper / TF OD API             ResNet50, FPN P3-P7 width 256 (P6 from C5),
                            ssd_resnet50_v1_fpn_640x640 sizes       towers 4 x 256, 9 anchors, ReLU, 640 px
==========================  ======================================  =========================================
"""
PRESETS = {
    "retinanet_mobilenetv2_fpn": {
        "image_size": [320, 320], "activation": "relu6",
        "backbone": {"name": "mobilenetv2", "alpha": 1.0},
        "neck": {"kind": "fpn", "min_level": 3, "max_level": 7, "width": 128, "lite": False, "batch_norm": False,
                 "extra_levels_from": "C5"},
        "head": {"kind": "retinanet", "width": 128, "depth": 4},
        "anchors": {"scale": 4.0, "scales_per_octave": 3, "aspect_ratios": [0.5, 1.0, 2.0]}},
    "ssd_mobilenetv2_fpnlite": {
        "image_size": [320, 320], "activation": "relu6",
        "backbone": {"name": "mobilenetv2", "alpha": 1.0},
        "neck": {"kind": "fpn", "min_level": 3, "max_level": 7, "width": 128, "lite": True, "batch_norm": True,
                 "extra_levels_from": "P5"},
        "head": {"kind": "ssd_fpnlite", "width": 128, "depth": 4},
        "anchors": {"scale": 4.0, "scales_per_octave": 2, "aspect_ratios": [1.0, 2.0, 0.5]}},
    "retinanet_resnet50_fpn": {
        "image_size": [640, 640], "activation": "relu",
        "backbone": {"name": "resnet50", "alpha": 1.0},
        "neck": {"kind": "fpn", "min_level": 3, "max_level": 7, "width": 256, "lite": False, "batch_norm": False,
                 "extra_levels_from": "C5"},
        "head": {"kind": "retinanet", "width": 256, "depth": 4},
        "anchors": {"scale": 4.0, "scales_per_octave": 3, "aspect_ratios": [0.5, 1.0, 2.0]}},
}
