"""keras_fpn.training"""
