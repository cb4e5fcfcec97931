"""Helpers shared by the test modules (imported, not collected).

The tiny trained-and-registered model is the ``tiny_run`` fixture
(tests/conftest.py), built once per session by :func:`train_tiny`.
"""

import json
import os
import re
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

TINY_NAME = "digits-nif4-tiny"  # The registered name of the tiny run.
TINY_STEPS = 4


def perturb(model, scale, seed):
  """Adds noise to every parameter so that no zero-init makes a check trivial."""
  rng = np.random.default_rng(seed)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(
      lambda p: p + jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), params))


@nnx.jit
def quantities(layer, x, s):
  """Every closed-form quantity of a NIF layer at once (one compile per shape;
  s is traced), to hold against the float64 oracles of nif_oracles.py."""
  return dict(log_prob=layer.log_prob(x, noise_scale=s),
              log_h=layer.log_normalizer(x, noise_scale=s),
              q=layer.stochastic_inverse(x, noise_scale=s),
              post=layer.posterior(x, noise_scale=s),
              elbo=layer.elbo(x, noise_scale=s))


def tiny_nf():
  """An untrained tiny digits NF, its ActNorms initialised from 64 training
  images, with its config attached (what ``convert.nf_to_nif`` takes)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from nifzoo import configs, data, models  # pylint: disable=g-import-not-at-top
  c = configs.get_config("digits-nf,tiny")
  m = models.build(c, rngs=nnx.Rngs(0))
  src = data.get_source(c.data, "train")
  m.initialize(np.stack([src[i]["image"] for i in range(64)]).astype(np.int32),
               key=jax.random.key(5))
  m.config = ml_collections.FrozenConfigDict(c)
  return m


def train_tiny(root: str):
  """Trains ``digits-nif4,tiny`` for TINY_STEPS steps into ``<root>/run`` and
  registers it as TINY_NAME in ``<root>/reg``; writes ``<root>/result.json``
  (the loop's result) last, so its presence means the run is complete."""
  from nifzoo import configs  # pylint: disable=g-import-not-at-top
  from nifzoo import registry  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import metrics  # pylint: disable=g-import-not-at-top
  from nifzoo.train import loop  # pylint: disable=g-import-not-at-top
  workdir, reg = os.path.join(root, "run"), os.path.join(root, "reg")
  c = configs.get_config("digits-nif4,tiny")
  c.total_steps = c.checkpoint_every = c.log_every = TINY_STEPS
  c.sample_every, c.tensorboard = 100, False
  result = loop.train_and_evaluate(c, workdir)
  registry.register(workdir, reg, name=TINY_NAME, command="pytest",
                    metrics=metrics.bits_per_dim_metric(result["test_eval"], "pytest"))
  with open(os.path.join(root, "result.json"), "w") as f:
    json.dump(result, f, default=float)


def env_with_devices(devices: int, env=None) -> dict:
  """``env`` (default ``os.environ``) for a subprocess with ``devices`` host
  devices, keeping the session's XLA flags (tests/conftest.py's fast compile:
  without them the subprocess compiles at full optimisation)."""
  env = dict(os.environ if env is None else env)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count=")]
  env["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def copy_tree(src: str, dst) -> str:
  """A private copy of a shared directory (the tiny run's registry or workdir)
  for a test that changes it."""
  dst = os.path.join(str(dst), os.path.basename(src))
  shutil.copytree(src, dst)
  return dst


def imported_packages(importtime_log: str) -> set[str]:
  """The top-level packages in a ``python -X importtime`` log, each read from
  all of its modules' lines (a package's own line can be broken by another
  thread's log output in the same stream)."""
  return {m.split(".")[0] for m in
          re.findall(r"^import time:.*\|\s+([\w.]+)$", importtime_log, re.M)}
