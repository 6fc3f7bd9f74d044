"""keras_fpn.models"""
