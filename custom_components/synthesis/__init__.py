"""The synthesis stages around the bundles' engines: :mod:`~custom_components.synthesis.healthy_prep` (healthy
scans registered into the tumour data's space), :mod:`~custom_components.synthesis.tf_aug` (TF-Aug's case plan,
moment start and case writer) and :mod:`~custom_components.synthesis.tf_gan` (TF-GAN's refinement writer and what
it changed).

The modules are imported one by one (the tf_gan bundle's vendored copy holds only what its configs import), so
this package re-exports nothing.
"""
