r"""Will it fit? Compiles a config's real train step for a TPU, without a TPU.

With ``libtpu`` installed (the ``tpu`` extra), JAX hands out compile-only TPU
devices for a named topology; the train step of :mod:`nifzoo.train.step`,
jitted as the training loop jits it, is lowered on an abstract state and batch
(nothing is allocated) and compiled by the real TPU compiler on this machine.
The compiler's verdict is the fit test: a program that does not fit in a
chip's HBM is refused (``RESOURCE_EXHAUSTED``).

  python -m nifzoo.tpu --config=celeba-nif128 --topology=v5e:2x2
  python -m nifzoo.tpu --config=configs/celeba.py:nif128,width=512 \
      --topology=v5e:1x1 --max_batch

prints the per-chip HBM from the compiler's buffer assignment, the compile
time, whether every product of the NIF prior is at full precision, and with
``--max_batch`` the largest per-chip batch that compiles. Topology names are
jax's (``v5e:2x2``, ``v4:2x2x1``, ``v5p:2x2x1``, ``v6e:2x2``;
``docs/math.md`` and ``README.md``, "Will it fit?"); one chip is ``v5e:1x1``,
``v4:1x1x1``, ``v5p:1x1x1``.

Also here: :func:`emulate_tpu_precision`, which evaluates a function on CPU with
the operands of every product that a TPU would compute from bfloat16 operands
rounded to bfloat16 (``bench/tpu_precision.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import math
import os
import re
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from nifzoo import mesh as mesh_lib
from nifzoo.train import step as step_lib

GiB = 2 ** 30

# Usable HBM per chip as the compiler states it when refusing a program
# (libtpu 0.0.42.1), in GiB. For reference only: the fit test is the compiler's.
USABLE_HBM_GIB = {"v4": 30.75, "v5e": 15.75, "v5p": 95.74, "v6e": 31.25}

# The one-chip topology of each generation.
ONE_CHIP = {"v4": "v4:1x1x1", "v5e": "v5e:1x1", "v5p": "v5p:1x1x1",
            "v6e": "v6e:1x1"}


class TPUUnavailableError(RuntimeError):
  """libtpu is not installed (or cannot be loaded): no TPU compiler here."""


# ------------------------------------------------------------------ topology


def _compile_only_setup() -> None:
  """What a process compiling for TPU without one needs: libtpu may be loaded
  by several processes at once (pytest -n), its warnings about the missing
  hardware are silenced (the target follows the topology name)."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


@contextlib.contextmanager
def no_persistent_cache():
  """The persistent compilation cache off for the compiles inside the block
  (then back as it was): it writes TPU entries that a compile-only client
  cannot read back (disk, no speed-up). jax decides once per process whether
  the cache is used, hence the resets."""
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  was = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  cc.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", was)
    cc.reset_cache()


def generation(topology_name: str) -> str:
  """``"v5e:2x2"`` -> ``"v5e"``."""
  return topology_name.partition(":")[0]


@functools.lru_cache(maxsize=None)
def topology(topology_name: str):
  """The compile-only TPU topology ``topology_name`` (e.g. ``"v5e:2x2"``).

  A single chip (``v5e:1x1``, ``v4:1x1x1``) is one chip on one host. A v4 chip
  is one device (megacore, as a v4 VM shows it). Raises
  :class:`TPUUnavailableError` when libtpu is not installed.
  """
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  _compile_only_setup()
  gen, _, shape = topology_name.partition(":")
  kwargs = {}
  if gen == "v4":
    kwargs["chip_config_name"] = "megacore"
  dims = [int(d) for d in shape.split("x")] if shape else []
  if dims and math.prod(dims) == 1:
    kwargs["chips_per_host_bounds"] = (1, 1, 1)
  try:
    return topologies.get_topology_desc(topology_name=topology_name,
                                        platform="tpu", **kwargs)
  except RuntimeError as e:
    if "not installed" in str(e) or "TPU" in str(e) and "support" in str(e):
      raise TPUUnavailableError(
          f"Cannot compile for TPU here: {e} Install libtpu with "
          "`pip install -e '.[tpu]'` (Linux x86-64).") from e
    raise


def compile_mesh(topology_name: str) -> jax.sharding.Mesh:
  """nifzoo's ``data`` mesh over the compile-only devices of a topology."""
  return mesh_lib.make_mesh(devices=topology(topology_name).devices)


def tpu_available() -> tuple[bool, str]:
  """(True, "") when TPU programs can be compiled here, else (False, why)."""
  try:
    topology("v5e:2x2")
    return True, ""
  except Exception as e:  # pylint: disable=broad-except
    return False, f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------ compiling


def abstract_inputs(config, mesh, global_batch: int):
  """``(graphdef, tx, state, images)``: the fresh train state of ``config``
  replicated over ``mesh`` and a batch-sharded integer image batch, all
  ``jax.ShapeDtypeStruct`` (``step.new_train_state(config, abstract=True)``)."""
  graphdef, tx, state = step_lib.new_train_state(config, abstract=True)
  repl = mesh_lib.replicated(mesh)
  state = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), state)
  images = jax.ShapeDtypeStruct(
      (global_batch, *config.data.image_shape), jnp.int32,
      sharding=mesh_lib.batch_sharded(mesh))
  return graphdef, tx, state, images


def lower_train_step(config, mesh, global_batch: int):
  """The training loop's jitted train step (``step.jit_train_step``) lowered
  on abstract inputs."""
  graphdef, tx, state, images = abstract_inputs(config, mesh, global_batch)
  return step_lib.jit_train_step(graphdef, tx, config, mesh).lower(state, images)


@dataclasses.dataclass
class Compiled:
  """One compile of a train step for a topology (``compile_train_step``)."""
  topology: str
  devices: int
  global_batch: int
  fits: bool
  compile_s: float
  hbm: dict | None = None          # per chip, bytes: buffer_assignment()
  memory_analysis: dict | None = None
  error: str | None = None         # the compiler's refusal, when it does not fit
  executable: Any = None
  hlo_text: str | None = None

  @property
  def per_chip_batch(self) -> int:
    return self.global_batch // self.devices

  @property
  def hbm_gib(self) -> float | None:
    return None if self.hbm is None else self.hbm["total"] / GiB


_OOM = ("RESOURCE_EXHAUSTED", "Ran out of memory", "exceeds available HBM")


def is_out_of_memory(error: BaseException) -> bool:
  text = str(error)
  return any(s in text for s in _OOM)


def compile_train_step(config, topology_name: str, global_batch: int | None = None,
                       *, keep_text: bool = False, effort: float = 0.0) -> Compiled:
  """Compiles ``config``'s train step for ``topology_name`` at ``global_batch``
  (default ``config.batch_size``), data-parallel over all its chips.

  ``effort`` is the compiler's execution-time optimisation effort in [-1, 1]
  (jax's ``jax_exec_time_optimization_effort``; 0, the default, is what a
  training run gets). At -1 the TPU compiler is several times faster on the
  paper's configs and the program it makes needs a few per cent more HBM: a
  quick check that a config compiles and fits, not the figure of a fit table.

  Returns a :class:`Compiled`: ``fits`` False when the compiler refused the
  program for lack of HBM (any other error is raised). The per-chip HBM comes
  from the compiler's buffer assignment (:func:`buffer_assignment`).
  """
  if not -1.0 <= effort <= 1.0:
    raise ValueError(f"effort must lie in [-1, 1], got {effort}.")
  mesh = compile_mesh(topology_name)
  n = mesh.devices.size
  global_batch = int(global_batch or config.batch_size)
  if global_batch % n:
    raise ValueError(f"global batch {global_batch} does not divide over the "
                     f"{n} chips of {topology_name}.")
  lowered = lower_train_step(config, mesh, global_batch)
  with tempfile.TemporaryDirectory(prefix="nifzoo-tpu-dump-") as dump:
    t0 = time.perf_counter()
    try:
      with no_persistent_cache():
        options = {"xla_dump_to": dump}
        if effort:
          options["exec_time_optimization_effort"] = float(effort)
        exe = lowered.compile(compiler_options=options)
    except Exception as e:  # pylint: disable=broad-except
      if not is_out_of_memory(e):
        raise
      return Compiled(topology_name, n, global_batch, False,
                      time.perf_counter() - t0, error=_first_line(e))
    secs = time.perf_counter() - t0
    hbm = buffer_assignment(dump)
  ma = exe.memory_analysis()
  ma = {k: int(getattr(ma, k)) for k in dir(ma)
        if k.endswith("_in_bytes") and isinstance(getattr(ma, k), int)}
  return Compiled(topology_name, n, global_batch, True, secs, hbm, ma,
                  executable=exe, hlo_text=exe.as_text() if keep_text else None)


def _first_line(e: BaseException) -> str:
  text = str(e)
  m = re.search(r"(RESOURCE_EXHAUSTED.*?)(\n|$)", text)
  return (m.group(1) if m else text.splitlines()[0])[:400]


def buffer_assignment(dump_dir: str) -> dict:
  """Per-chip HBM of the compiled program, from the compiler's buffer assignment.

  ``{"total", "arguments", "outputs", "temp", "other"}`` in bytes: the
  allocations of the module's ``*buffer-assignment.txt`` in HBM (memory color
  0; VMEM and SMEM are on-chip), each buffer once (an output that aliases a
  donated argument is counted with the arguments), by kind: parameters,
  output-only buffers, ``preallocated-temp`` and the rest (constants,
  thread-local scratch). ``total`` is checked against the dump's
  memory-usage report. ``memory_analysis()`` overstates TPU temporaries
  (bench/README.md, "TPU fit without a TPU"); this is what the compiler placed.
  """
  files = glob.glob(os.path.join(dump_dir, "*after_optimizations-buffer-assignment.txt"))
  if not files:
    raise FileNotFoundError(f"No *buffer-assignment.txt in {dump_dir}.")
  path = max(files, key=os.path.getsize)  # the train step's module
  out = {"arguments": 0, "outputs": 0, "temp": 0, "other": 0}
  alloc = re.compile(r"^allocation \d+: size (\d+)(.*)$")
  with open(path) as f:
    for line in f:
      m = alloc.match(line)
      if not m:
        continue
      size, rest = int(m.group(1)), m.group(2)
      color = re.match(r", color (\d+)", rest)
      if color and color.group(1) != "0":
        continue
      if ", parameter " in rest:
        out["arguments"] += size
      elif "preallocated-temp" in rest:
        out["temp"] += size
      elif "output shape" in rest or rest.strip(" ,:") == "maybe-live-out":
        out["outputs"] += size
      else:
        out["other"] += size
  out["total"] = sum(out.values())
  report = path.replace("-buffer-assignment.txt", "-memory-usage-report.txt")
  if os.path.exists(report):
    m = re.search(r"Memory Space: default \(color=0\)\s*Total bytes: (\d+)",
                  open(report).read())
    if m:
      out["report_total"] = int(m.group(1))
  return out


# ------------------------------------------------------------------ fitting


def predict_max_batch(b1: int, bytes1: float, b2: int, bytes2: float,
                      capacity: float, multiple: int = 8) -> int:
  """The largest multiple of ``multiple`` whose HBM, on the line through
  (b1, bytes1) and (b2, bytes2), stays under ``capacity`` bytes."""
  slope = (bytes2 - bytes1) / (b2 - b1)
  if slope <= 0:
    raise ValueError("HBM does not grow with the batch: cannot predict.")
  b = (capacity - (bytes1 - slope * b1)) / slope
  return max(multiple, int(b // multiple) * multiple)


def max_batch(compile_at: Callable[[int], Compiled], guess: int, *,
              multiple: int = 8, known: dict | None = None,
              limit: int = 1 << 16, descend: int = 6) -> tuple[int, list[Compiled]]:
  """The largest per-chip batch (a multiple of ``multiple``) that compiles.

  ``compile_at(b)`` compiles at per-chip batch b. Starts at ``guess`` (e.g.
  :func:`predict_max_batch`): when ``guess`` compiles and ``guess + multiple``
  is refused, that is the answer in two compiles. When ``guess`` is refused,
  up to ``descend`` batches below it are tried, 8, 16, 32, ... further down
  (the compiler refuses in seconds; a program that fits takes it a minute),
  and the first that fits closes the bracket. Otherwise the bracket is
  widened; then bisected, on the compiler's own refusals. ``known`` maps batches
  already compiled to whether they fit. Returns (batch, the compiles made).
  """
  known = dict(known or {})
  made = []

  def fits(b):
    if b not in known:
      c = compile_at(b)
      made.append(c)
      known[b] = c.fits
    return known[b]

  lo = max((b for b, ok in known.items() if ok), default=0)
  hi = min((b for b, ok in known.items() if not ok), default=None)
  g = max(multiple, guess // multiple * multiple)
  if g >= lo and (hi is None or g < hi):  # the guess, then its neighbour
    if fits(g):
      lo = g
      if hi is None or g + multiple < hi:
        if fits(g + multiple):
          lo = g + multiple
        else:
          hi = g + multiple
    else:
      hi = g
  if hi is not None and lo < hi - multiple and g >= hi:
    # The guess (a prediction) is refused: the limit is most likely a few
    # steps below it, and a refusal costs a fraction of a compile that fits.
    # Steps down of 8, 16, 32, ... until one fits; then the bisection below.
    step = multiple
    for _ in range(descend):
      if hi - step <= lo:
        break
      if fits(hi - step):
        lo = hi - step
        break
      hi -= step
      step *= 2
  step = max(multiple, lo)
  while hi is None:  # widen upwards
    b = min(limit, lo + step)
    if fits(b):
      lo = b
      if b >= limit:
        return lo, made
    else:
      hi = b
    step *= 2
  if lo == 0:  # widen downwards
    b = hi
    while lo == 0:
      b = b // 2 // multiple * multiple
      if b < multiple:
        return 0, made
      if fits(b):
        lo = b
      else:
        hi = b
  while hi - lo > multiple:  # bisect
    mid = (lo + hi) // 2 // multiple * multiple
    if mid <= lo:
      break
    if fits(mid):
      lo = mid
    else:
      hi = mid
  return lo, made


# ------------------------------------------------------------------ precision


_PRODUCT = re.compile(r"=\s*\S+\s+(dot|convolution)\(")


def products(hlo_text: str, scope: str | None = None) -> list[dict]:
  """The products (``dot``/``convolution``) of an HLO module's text, with their
  ``operand_precision`` (absent: the backend's default) and ``op_name``,
  optionally only those whose op_name contains ``scope`` (a named scope)."""
  out = []
  for line in hlo_text.splitlines():
    if not _PRODUCT.search(line):
      continue
    name = re.search(r'op_name="([^"]*)"', line)
    name = name.group(1) if name else ""
    if scope is not None and not re.search(
        rf"(^|[/(]){re.escape(scope)}([/)]|$)", name):
      continue
    prec = re.search(r"operand_precision=\{([^}]*)\}", line)
    out.append({"precision": prec.group(1) if prec else "default",
                "op_name": name, "line": line.strip()[:300]})
  return out


def check_prior_precision(hlo_text: str) -> list[dict]:
  """The products of the NIF prior's closed form (named scope
  ``nif.gaussian.SCOPE``) in a compiled program; raises AssertionError naming
  those whose operands are not both ``highest`` (or when there are none)."""
  from nifzoo.nif import gaussian  # pylint: disable=g-import-not-at-top
  prods = products(hlo_text, gaussian.SCOPE)
  if not prods:
    raise AssertionError(f"No product in the named scope {gaussian.SCOPE!r}: "
                         "the program has no NIF prior, or lost its metadata.")
  bad = [p for p in prods if p["precision"] != "highest,highest"]
  if bad:
    raise AssertionError(
        f"{len(bad)} of the NIF prior's {len(prods)} products are not at "
        "operand_precision={highest,highest}: "
        + "; ".join(f"{p['precision']} {p['op_name']}" for p in bad[:5]))
  return prods


# ------------------------------------------------------------------ emulation


def _round_bf16(x):
  return x.astype(jnp.bfloat16).astype(x.dtype)


def _passes(precision, default: int) -> tuple[int, int]:
  """bfloat16 passes per operand a TPU uses for a product's ``precision``
  param: 1 (DEFAULT: one bf16 pass), 3 (HIGH: bf16_3x) or 0 (HIGHEST: f32)."""
  table = {jax.lax.Precision.DEFAULT: 1, jax.lax.Precision.HIGH: 3,
           jax.lax.Precision.HIGHEST: 0}
  if precision is None:
    return default, default
  if isinstance(precision, jax.lax.Precision):
    precision = (precision, precision)
  if isinstance(precision, tuple) and all(isinstance(p, jax.lax.Precision)
                                          for p in precision):
    return tuple(table[p] for p in precision)
  # A DotAlgorithm(Preset) or anything else: leave the product as it is.
  return 0, 0


def _split_bf16(x):
  hi = _round_bf16(x)
  return hi, _round_bf16(x - hi)


def _emulated_product(prim, a, b, params, default: int):
  """A product as a TPU computes it from its operands' precision: operands
  rounded to bfloat16 (1 pass), split in a high and a low bfloat16 part with
  three partial products (HIGH, bf16_3x), or float32 (HIGHEST)."""
  pa, pb = _passes(params.get("precision"), default)
  floats = all(jnp.issubdtype(v.dtype, jnp.floating) and v.dtype != jnp.bfloat16
               for v in (a, b))
  if not floats or (pa == 0 and pb == 0):
    return prim.bind(a, b, **params)
  if pa == 3 or pb == 3:
    (ah, al), (bh, bl) = _split_bf16(a), _split_bf16(b)
    return (prim.bind(ah, bh, **params) + prim.bind(ah, bl, **params)
            + prim.bind(al, bh, **params))
  a = _round_bf16(a) if pa else a
  b = _round_bf16(b) if pb else b
  return prim.bind(a, b, **params)


_PRODUCTS = ("dot_general", "conv_general_dilated")
# Primitives whose sub-jaxpr is evaluated inline (called once, no loop).
_INLINE = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
           "core_call": "call_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr",
           "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
           "custom_vjp_call_jaxpr": "fun_jaxpr"}


def _eval(jaxpr, consts, args, default):
  from jax.extend import core as jcore  # pylint: disable=g-import-not-at-top
  env = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in _PRODUCTS:
      outs = [_emulated_product(eqn.primitive, *invals, eqn.params, default)]
    elif name in _INLINE and _INLINE[name] in eqn.params:
      sub = eqn.params[_INLINE[name]]
      if hasattr(sub, "consts"):  # ClosedJaxpr
        outs = _eval(sub.jaxpr, sub.consts, invals, default)
      else:
        outs = _eval(sub, [], invals, default)
    else:
      params = {k: _emulate_param(v, default) for k, v in eqn.params.items()}
      outs = eqn.primitive.bind(*invals, **params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  return [read(v) for v in jaxpr.outvars]


def _emulate_closed(closed, default):
  """A ClosedJaxpr with the same signature whose products are emulated."""
  from jax.extend import core as jcore  # pylint: disable=g-import-not-at-top
  avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype)
           for v in closed.jaxpr.invars]
  fn = lambda *a: _eval(closed.jaxpr, closed.consts, a, default)
  new = jax.make_jaxpr(fn)(*avals)
  assert isinstance(new, jcore.ClosedJaxpr)
  return new


def _emulate_param(v, default):
  """Loop and branch bodies (scan, while, cond) with emulated products."""
  from jax.extend import core as jcore  # pylint: disable=g-import-not-at-top
  if isinstance(v, jcore.ClosedJaxpr):
    return _emulate_closed(v, default)
  if isinstance(v, jcore.Jaxpr):
    new = _emulate_closed(jcore.ClosedJaxpr(v, ()), default)
    if new.consts:
      raise NotImplementedError("an open sub-jaxpr that needs constants")
    return new.jaxpr
  if isinstance(v, tuple) and v and all(isinstance(x, jcore.ClosedJaxpr)
                                        for x in v):
    return tuple(_emulate_closed(x, default) for x in v)
  return v


def emulate_tpu_precision(fn: Callable, *, default_passes: int = 1) -> Callable:
  """``fn`` evaluated as a TPU computes its products, on any backend.

  Every ``dot_general``/``conv_general_dilated`` of ``fn``'s jaxpr (inside
  jit, scan, while, cond, remat, custom_jvp/custom_vjp functions too) gets its
  float32 operands rounded to bfloat16 when its precision is DEFAULT (or
  unset: ``default_passes=1``, JAX's TPU default, one bfloat16 pass), split
  into three bfloat16 products for HIGH, and left in float32 for HIGHEST;
  products accumulate in float32 as the MXU does. Everything else is
  unchanged. For forward evaluation (the custom derivative rules are dropped).
  """

  @functools.wraps(fn)
  def wrapped(*args):
    closed = jax.make_jaxpr(fn)(*args)
    flat = jax.tree.leaves(args)
    out = _eval(closed.jaxpr, closed.consts, flat, default_passes)
    shape = jax.eval_shape(fn, *args)
    return jax.tree.unflatten(jax.tree.structure(shape), out)

  return wrapped


def largest_batch(compile_at: Callable[[int], Compiled],
                  hbm: dict[int, float | None], capacity: float, *,
                  multiple: int = 8, secant_steps: int = 3,
                  guess: int | None = None) -> tuple[int, int]:
  """The largest per-chip batch that compiles on one chip, from compiles made.

  ``hbm`` maps the per-chip batches already compiled to their HBM bytes
  (``None``: refused); ``compile_at(b)`` compiles at per-chip batch b. HBM is
  close to linear in the batch, so the line through the two largest fitting
  batches predicts the limit (:func:`predict_max_batch`); an accepted
  prediction is a new point and the line predicts again (HBM grows a little
  less than linearly at large batches), at most ``secant_steps`` times; then
  :func:`max_batch` confirms on the compiler's refusals, reusing every verdict.
  ``guess``, when given, replaces the first prediction (e.g. from another
  generation's slope at large batches). Returns (the largest batch, the first
  prediction).
  """
  hbm = dict(hbm)
  known = {b: v is not None for b, v in hbm.items()}

  def predict():
    fit = sorted(b for b, v in hbm.items() if v is not None)
    if len(fit) < 2:
      return fit[-1] if fit else multiple
    b1, b2 = fit[-2:]
    return predict_max_batch(b1, hbm[b1], b2, hbm[b2], capacity, multiple)

  guess = first = (guess // multiple * multiple if guess else predict())
  if any(known.values()):
    for _ in range(secant_steps):
      if guess in known:
        break
      c = compile_at(guess)
      known[guess] = c.fits
      if not c.fits:
        break
      hbm[guess] = c.hbm["total"]
      nxt = predict()
      if nxt <= guess:
        break
      guess = nxt
  return max_batch(compile_at, guess, multiple=multiple, known=known)[0], first


# ------------------------------------------------------------------ CLI


def fit_report(config, topology_name: str, batch: int | None = None, *,
               find_max_batch: bool = False, effort: float = 0.0,
               out: Callable[[str], None] = print) -> dict:
  """Will ``config`` fit ``topology_name``? Compiles its train step at
  ``batch`` (default the config's) and reports the per-chip HBM and the NIF
  prior's precision; with ``find_max_batch`` also the largest per-chip batch on
  one chip of that generation (:func:`largest_batch`). Prints with ``out`` and
  returns ``{"compiled": Compiled, "max_per_chip_batch": int | None}``."""
  from nifzoo import models  # pylint: disable=g-import-not-at-top
  batch = batch or config.batch_size
  out(f"{config.name}: train step, global batch {batch}, on {topology_name}")
  c = compile_train_step(config, topology_name, batch, keep_text=True,
                         effort=effort)
  cap = USABLE_HBM_GIB.get(generation(topology_name))
  if c.fits:
    out(f"  compiles in {c.compile_s:.1f} s; per chip: batch "
        f"{c.per_chip_batch}, HBM {_size(c.hbm['total'])}"
        + (f" of {cap} GiB usable" if cap else "")
        + f" (arguments {_size(c.hbm['arguments'])}, temporaries "
          f"{_size(c.hbm['temp'])})")
    if models.PRIORS[config.model.prior].has_manifold:
      n = len(check_prior_precision(c.hlo_text))
      out(f"  the NIF prior's {n} products: all operand_precision=highest")
  else:
    out(f"  does NOT fit (per-chip batch {c.per_chip_batch}): {c.error}")
  best = None
  if find_max_batch:
    one = ONE_CHIP[generation(topology_name)]
    out(f"  largest per-chip batch on {one} (multiples of 8) ...")
    at = lambda b: compile_train_step(config, one, b, effort=effort)
    a = at(8)
    hbm = {8: a.hbm["total"] if a.fits else None}
    if c.per_chip_batch != 8:
      hbm[c.per_chip_batch] = c.hbm["total"] if c.fits else None
    best, _ = largest_batch(at, hbm, cap * GiB)
    out(f"  largest per-chip batch that compiles: {best}")
  return {"compiled": c, "max_per_chip_batch": best}


def _main(argv):
  del argv
  import logging  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from nifzoo import configs  # pylint: disable=g-import-not-at-top
  logging.getLogger("jax").setLevel(logging.WARNING)
  f = flags.FLAGS
  config = configs.load(f.config)
  for item in f.set or []:
    key, _, value = item.partition("=")
    configs.set_field(config, key, configs.parse_value(value))
  fit_report(config, f.topology, f.batch, find_max_batch=f.max_batch,
             effort=f.effort)


def _size(nbytes: int) -> str:
  return (f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB / 10 else
          f"{nbytes / 2**20:.1f} MiB")


def main():
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("config", None, "A zoo name with overrides "
                      "('celeba-nif128,width=512') or configs/<ds>.py:<arg>.",
                      required=True)
  flags.DEFINE_string("topology", "v5e:2x2", "A TPU topology (jax's name).")
  flags.DEFINE_integer("batch", None, "Global batch (default: the config's).")
  flags.DEFINE_multi_string("set", None, "config field=value, e.g. "
                            "model.matmul_precision=highest.")
  flags.DEFINE_bool("max_batch", False, "Also find the largest per-chip batch "
                    "that compiles on one chip of that generation.")
  flags.DEFINE_float("effort", 0.0, "The compiler's execution-time "
                     "optimisation effort in [-1, 1]: -1 answers several "
                     "times faster, with a somewhat larger HBM figure.")
  app.run(_main)


if __name__ == "__main__":
  if "JAX_PLATFORMS" not in os.environ:  # Only compiles: no TPU backend wanted.
    jax.config.update("jax_platforms", "cpu")
  main()
