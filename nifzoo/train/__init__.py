"""Training: optimiser and step (``step``) (the data-parallel mesh is ``nifzoo.mesh``),
Orbax checkpoints (``checkpoint``) and the loop (``loop``).

The loop (and through clu's writers, TensorFlow) is imported on first use of
``train_and_evaluate``, so ``nifzoo.zoo`` (which needs only ``checkpoint``) loads
without it.
"""

__all__ = ["NonFiniteLossError", "train_and_evaluate"]


def __getattr__(name):
  if name in __all__:
    from nifzoo.train import loop  # pylint: disable=g-import-not-at-top
    return getattr(loop, name)
  raise AttributeError(f"module 'nifzoo.train' has no attribute {name!r}")
