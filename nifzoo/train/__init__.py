"""Training: optimiser and step (``step``) (the data-parallel mesh is ``nifzoo.mesh``),
Orbax checkpoints (``checkpoint``) and the loop (``loop``)."""

from nifzoo.train.loop import NonFiniteLossError, train_and_evaluate

__all__ = ["NonFiniteLossError", "train_and_evaluate"]
