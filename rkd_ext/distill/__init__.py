"""The reference ResNet teacher -> student distillation with RKD (``python -m rkd_ext.distill``).

``cli`` holds the command line, ``options`` the options and presets, ``job``
the sequence of one run (data, teacher, each seed's students, results),
``train`` the training loop and the RKD objective, ``data`` the datasets and
augmentation, ``stats`` the paired comparison over seeds, ``checkpoint`` and
``report`` what a run writes.
"""
