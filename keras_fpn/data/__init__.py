"""keras_fpn.data"""
