"""keras_fpn.ops"""
