"""The one configuration system: a tree of frozen dataclasses, YAML files, ``--set`` overrides.

``schema`` holds the tree and its checks, ``loader`` reads and writes it,
``migrate`` maps the old flat model keys to the tree.
"""
from keras_fpn.config.loader import (PATH_KEYS, config_from_dict, config_to_dict, config_yaml, deep_merge,
                                     get_dotted, load_config, replace_dotted, save_config)
from keras_fpn.config.schema import (BACKBONE_STRIDE, HEADS, NECKS, AnchorConfig, BackboneConfig, Config,
                                     ConfigError, DataConfig, ExportConfig, HeadConfig, ModelConfig, NeckConfig,
                                     PostprocessConfig, SegmentationHeadConfig, TrainConfig, check_image_size)

__all__ = ["PATH_KEYS", "config_from_dict", "config_to_dict", "config_yaml", "deep_merge", "get_dotted", "load_config",
           "replace_dotted", "save_config", "BACKBONE_STRIDE", "HEADS", "NECKS", "AnchorConfig", "BackboneConfig",
           "Config", "ConfigError", "DataConfig", "ExportConfig", "HeadConfig", "ModelConfig", "NeckConfig",
           "PostprocessConfig", "SegmentationHeadConfig", "TrainConfig", "check_image_size"]
