"""Drop-in replacements for the RKD losses of other frameworks, computed by rkd_ext's kernels.

One module per framework, each reproducing that framework's constructor
arguments, defaults, forward signature, input handling and numbers (within
float32 rounding on non-degenerate input)::

    rkd_ext.compat.lenscloth     RkdDistance, RKdAngle             (the authors' code)
    rkd_ext.compat.mmrazor       DistanceWiseRKD, AngleWiseRKD     (registered in mmrazor's MODELS)
    rkd_ext.compat.torchdistill  RKDLoss                           (registered as a torchdistill loss)
    rkd_ext.compat.repdistiller  RKDLoss
    rkd_ext.compat.mdistiller    rkd_loss
    rkd_ext.compat.kdlib         RKDDistanceLoss, RKDAngleLoss, RKDLoss

Switching is an import change. Where a framework computes the teacher under
``torch.no_grad()``, its wrapper here detaches the teacher, so the teacher
receives gradients exactly where it did before.

Two deliberate differences hold for every wrapper:

* a batch of one sample (no pairs; fewer than three samples for the angle
  term) gives a loss of 0 with a zero gradient and a one-time warning, where
  the frameworks return NaN for the distance term;
* exactly coincident samples get a zero subgradient through their pair, where
  the frameworks' gradient is scaled by 1/eps (about 1e12).

The modules are not imported here: importing one registers it with its
framework, which should only happen when asked for.
"""
