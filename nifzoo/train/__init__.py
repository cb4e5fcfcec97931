"""Training: optimiser and step (``step``), data-parallel mesh (``mesh``),
Orbax checkpoints (``checkpoint``) and the loop (``loop``)."""

from nifzoo.train.loop import NonFiniteLossError, train_and_evaluate

__all__ = ["NonFiniteLossError", "train_and_evaluate"]
