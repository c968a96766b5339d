"""The reference ResNet teacher -> student distillation with RKD (``python -m rkd_ext.distill``).

``cli`` holds the command line and presets, ``train`` the training loop and the
RKD objective, ``data`` the datasets and augmentation, ``checkpoint`` and
``report`` what a run writes.
"""
