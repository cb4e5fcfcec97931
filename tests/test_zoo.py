"""The registry and zoo.load: schema, names, checkpoints, hashes, wiring, sharding."""

import json
import os
import shutil
import subprocess
import sys
import tomllib

import jax
import numpy as np
import pytest

from nifzoo import cards
from nifzoo import configs
from nifzoo import data
from nifzoo import models
from nifzoo import registry
from nifzoo import variables
from nifzoo import zoo

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ("digits-nf", "digits-nif4", "digits-nif8", "digits-nif16", "digits-nif32")
# launch/convert_digits.py: digits-nf converted to NIF-k, and that fine-tuned.
CONVERTED = tuple(f"digits-nif{k}-from-nf{s}" for k in (4, 8, 16, 32) for s in ("", "-ft"))
DEEP = ("digits-deepnif8", "digits-deepnif16")


@pytest.fixture(scope="module")
def trained(tiny_run):
  """The session's tiny run (4 steps) and its registration: (workdir, registry
  dir, result)."""
  return tiny_run


@pytest.fixture(scope="module")
def images():
  c = configs.get_config("digits-nif4")
  src = data.get_source(c.data, "test")
  return np.stack([src[i]["image"] for i in range(16)]).astype(np.int32)


# ------------------------------------------------------------------ entries


def _valid_entry():
  return json.load(open(registry.entry_path(registry.packaged_dir(), "celeba-nif128")))


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.pop("checkpoint"), "checkpoint"),
    (lambda d: d.update(config=3), "config"),
    (lambda d: d.update(schema=99), "schema"),
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d["card"].update(limitations=""), "card.limitations"),
    (lambda d: d.update(checkpoint={"uri": "x", "step": 1}), "checkpoint.sha256"),
    (lambda d: d.update(metrics={"bpd": {"value": 1.0}}), "metrics.bpd.command"),
    (lambda d: d["dataset"].update(num_levels="8"), "dataset.num_levels"),
])
def test_schema_errors_name_the_file_and_field(tmp_path, mutate, field):
  d = _valid_entry()
  mutate(d)
  path = registry.entry_path(str(tmp_path), "celeba-nif128")
  os.makedirs(os.path.dirname(path))
  json.dump(d, open(path, "w"))
  with pytest.raises(registry.RegistryError) as e:
    registry.read_entry(path)
  assert path in str(e.value) and repr(field) in str(e.value)


def test_bad_json_and_name_mismatch(tmp_path):
  path = registry.entry_path(str(tmp_path), "digits-x")
  os.makedirs(os.path.dirname(path))
  open(path, "w").write("{not json")
  with pytest.raises(registry.RegistryError, match="not valid JSON"):
    registry.read_entry(path)
  json.dump(_valid_entry(), open(path, "w"))
  with pytest.raises(registry.RegistryError, match="'name'.*'digits-x'"):
    registry.read_entry(path)


def test_packaged_registry_has_every_paper_name_with_its_figures():
  paper = [n for n in configs.names() if not n.startswith("digits-")]
  assert len(paper) == 16
  for name in paper:
    e = registry.find(name)
    assert e.checkpoint is None
    assert e.data["config"] == name
  # Spot checks against the paper's tables (FID at tuned s; bits/dim at s = 1).
  assert registry.find("celeba-nif64").paper["fid"] == 30.96
  assert registry.find("cifar10-nf").paper["bits_per_dim"] == 1.072
  assert registry.find("fmnist-nif512").paper["fid"] == 25.34
  assert registry.find("celeba-deepnif128").paper is None  # Not in the tables.


def test_unknown_name_suggests_close_matches():
  with pytest.raises(registry.RegistryError, match="Did you mean .*'celeba-nif128'"):
    zoo.load("celeba-nif12")


def test_info_shows_paper_figures_and_no_checkpoint():
  text = zoo.info("celeba-nif128")
  assert "fid = 34.46" in text and "bits_per_dim = 0.835" in text
  assert "checkpoint: none" in text and "launch/train.py" in text


def test_entry_without_checkpoint_refuses_unless_random():
  with pytest.raises(zoo.NoCheckpointError, match="launch/train.py --config=configs/fmnist.py:nf"):
    zoo.load("fmnist-nf")
  with pytest.raises(ValueError, match="init must be one of"):
    zoo.load("fmnist-nf", init="zeros")


def test_user_registry_overlays_the_packaged_one(trained, tmp_path, monkeypatch):
  _, reg, _ = trained
  assert "digits-nif4-tiny" not in zoo.list()
  assert "digits-nif4-tiny" in zoo.list("digits-*", registry=reg)
  monkeypatch.setenv("NIFZOO_REGISTRY", reg)
  assert "digits-nif4-tiny" in zoo.list()
  # An entry in a user registry shadows the packaged one of the same name.
  d = _valid_entry()
  d["card"]["summary"] = "my own celeba-nif128"
  registry.write_entry(str(tmp_path), d)
  assert registry.find("celeba-nif128", registry=str(tmp_path)).data["card"][
      "summary"] == "my own celeba-nif128"


# ------------------------------------------------------------------ loading


def test_register_round_trip_and_workdir_load_agree(trained, images):
  workdir, reg, result = trained
  from_dir = zoo.load(workdir)
  from_reg = zoo.load("digits-nif4-tiny", registry=reg)
  assert from_dir.entry is None and from_reg.entry.name == "digits-nif4-tiny"
  assert from_reg.config.model.width == 8  # The tiny overrides came back.
  a = np.asarray(from_dir.log_prob(images))
  b = np.asarray(from_reg.log_prob(images))
  np.testing.assert_array_equal(a, b)
  # The registered metric is the whole test split (300 digits), as trained.
  m = from_reg.entry.metrics["test_bits_per_dim"]
  assert m["num_images"] == 300 and m["value"] == pytest.approx(
      result["test_eval"]["bits_per_dim"], abs=1e-5)
  # The registry checkpoint holds variables only: no optimiser state.
  import orbax.checkpoint as ocp
  meta = ocp.StandardCheckpointer().metadata(
      registry.find("digits-nif4-tiny", registry=reg).checkpoint_path())
  tree = meta.item_metadata.tree
  assert set(tree) == {"params", "rest"}


def test_workdir_load_equals_the_training_state(trained, images):
  """Oracle: the parameters the training checkpoint holds, merged by hand."""
  import orbax.checkpoint as ocp
  from flax import nnx
  workdir, _, _ = trained
  raw = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", "4", "state"))
  model = zoo.load(workdir, step=4)
  _, params, _ = nnx.split(model, nnx.Param, ...)
  got = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
         jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]}
  want = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
          jax.tree_util.tree_flatten_with_path(raw["params"])[0]}
  assert len(got) == len(want) > 0
  for (kg, vg), (kw, vw) in zip(sorted(got.items()), sorted(want.items())):
    np.testing.assert_array_equal(vg, vw)
  assert bool(np.all(np.asarray(model.glow.scales[0].steps.actnorm.initialized[...])))
  with pytest.raises(zoo.CheckpointError, match="no checkpoint at step 3"):
    zoo.load(workdir, step=3)


def test_tampered_and_truncated_checkpoints_are_refused(trained, tmp_path):
  _, reg, _ = trained
  reg = helpers.copy_tree(reg, tmp_path)
  ckpt = registry.find("digits-nif4-tiny", registry=reg).checkpoint_path()
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(ckpt) for f in fs)
  biggest = max(files, key=os.path.getsize)
  original = open(biggest, "rb").read()
  flipped = bytearray(original)
  flipped[len(flipped) // 2] ^= 1
  open(biggest, "wb").write(bytes(flipped))
  with pytest.raises(zoo.ZooError, match="does not match the hash"):
    zoo.load("digits-nif4-tiny", registry=reg)
  open(biggest, "wb").write(original[: len(original) // 2])
  with pytest.raises(zoo.ZooError, match="does not match the hash"):
    zoo.load("digits-nif4-tiny", registry=reg)
  shutil.rmtree(ckpt)
  with pytest.raises(zoo.ZooError, match="missing"):
    zoo.load("digits-nif4-tiny", registry=reg)


def test_an_unreadable_checkpoint_with_a_matching_hash_is_refused(trained, tmp_path):
  """A damaged file whose hash was (wrongly) re-recorded still never loads."""
  _, reg, _ = trained
  reg = helpers.copy_tree(reg, tmp_path)
  e = registry.find("digits-nif4-tiny", registry=reg)
  meta = os.path.join(e.checkpoint_path(), "_METADATA")
  open(meta, "w").write("garbage")
  d = dict(e.data, checkpoint=dict(e.checkpoint, sha256=variables.hash_directory(
      e.checkpoint_path())))
  registry.write_entry(reg, d)
  with pytest.raises(zoo.CheckpointError, match="checkpoint at"):
    zoo.load("digits-nif4-tiny", registry=reg)


def test_other_wiring_is_refused_naming_the_fields(trained, tmp_path):
  _, reg, _ = trained
  reg = helpers.copy_tree(reg, tmp_path)
  e = registry.find("digits-nif4-tiny", registry=reg)
  wiring = dict(e.data["wiring"], revision=1)
  wiring["model.squeeze"] = "glow"
  registry.write_entry(reg, dict(e.data, wiring=wiring))
  with pytest.raises(zoo.ZooError, match="model.squeeze.*revision|revision.*model.squeeze"):
    zoo.load("digits-nif4-tiny", registry=reg)


def test_shape_mismatch_names_the_parameter(trained, tmp_path):
  _, reg, _ = trained
  reg = helpers.copy_tree(reg, tmp_path)
  e = registry.find("digits-nif4-tiny", registry=reg)
  overrides = dict(e.data["overrides"], **{"model.latent_dim": 5})
  wiring = dict(e.data["wiring"], **{"model.latent_dim": 5})
  registry.write_entry(reg, dict(e.data, overrides=overrides, wiring=wiring))
  with pytest.raises(zoo.CheckpointError, match=r"params/nif/A.*\(64, 4\).*\(64, 5\)"):
    zoo.load("digits-nif4-tiny", registry=reg)


def test_random_init_of_an_entry_without_checkpoint_is_usable(tmp_path, images):
  d = _valid_entry()
  d.update(name="digits-tiny-untrained", config="digits-nif4,tiny")
  registry.write_entry(str(tmp_path), d)
  with pytest.raises(zoo.NoCheckpointError, match="init='random'"):
    zoo.load("digits-tiny-untrained", registry=str(tmp_path))
  m = zoo.load("digits-tiny-untrained", registry=str(tmp_path), init="random")
  assert m.entry.name == "digits-tiny-untrained" and m.config.model.width == 8
  with pytest.warns(UserWarning, match=r"initialize"):  # Untrained ActNorms.
    lp = m.log_prob(images)
  assert np.all(np.isfinite(np.asarray(lp)))


def test_paper_entries_are_what_write_paper_entry_writes(tmp_path):
  """launch/build_registry.py's paper entries, rewritten from the configs, the
  paper's tables and bench/results/tpu_fit.json, equal the packaged files
  byte for byte."""
  fit = json.load(open(os.path.join(ROOT, "bench", "results", "tpu_fit.json")))
  paper = [n for n in configs.names() if not n.startswith("digits-")]
  for name in paper:
    written = registry.write_paper_entry(name, str(tmp_path),
                                         hardware=cards.hardware_record(fit, name))
    packaged = registry.entry_path(registry.packaged_dir(), name)
    assert open(written).read() == open(packaged).read(), name


def test_registered_entry_records_the_run(trained):
  """register's entry: the tiny overrides on the base config, the run's
  wiring and step, and a hash of exactly the exported files."""
  workdir, reg, _ = trained
  e = registry.find("digits-nif4-tiny", registry=reg)
  assert e.data["config"] == "digits-nif4" and e.data["training"] == {"command": "pytest"}
  assert e.data["overrides"]["model.width"] == 8
  assert e.data["wiring"] == json.load(open(os.path.join(workdir, variables.WIRING_FILE)))
  assert e.checkpoint["step"] == 4 and e.checkpoint["uri"] == "checkpoints/digits-nif4-tiny"
  assert e.checkpoint["sha256"] == variables.hash_directory(e.checkpoint_path())
  assert e.data["card"] == cards.default_card(variables.workdir_config(workdir), 4)


@pytest.mark.slow  # Starts a Python process that imports jax.
def test_zoo_imports_no_training_code():
  code = ("import sys\nfrom nifzoo import zoo\n"
          "print(sorted(m for m in sys.modules if m.startswith('nifzoo.train')))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == "[]"


def test_paper_entries_match_their_configs_wiring():
  for name in zoo.list("*"):
    e = registry.find(name)
    if e.checkpoint is None:
      assert e.data["wiring"] == json.loads(json.dumps(models.wiring(configs.get_config(name))))


# ------------------------------------------------------------------ shipped models


@pytest.mark.parametrize("name", SHIPPED + CONVERTED + DEEP)
def test_shipped_entries_hash_their_files(name):
  e = registry.find(name)
  assert e.checkpoint is not None, f"{name} ships no checkpoint"
  assert variables.hash_directory(e.checkpoint_path()) == e.checkpoint["sha256"]
  m = e.metrics["test_bits_per_dim"]
  # Scored by the results scripts, one protocol (launch/results_digits.py,
  # launch/convert_digits.py), with its standard error.
  made_by = "convert_digits.py" if "-from-nf" in name else "results_digits.py"
  assert m["num_images"] == 300 and m["command"].startswith(f"python launch/{made_by}")
  assert 0 < m["se"] < 0.05


def test_shipped_entries_are_the_packaged_checkpoints():
  """Every packaged checkpoint directory has its entry, and nothing else ships."""
  shipped = sorted(n for n in zoo.list() if registry.find(n).checkpoint is not None)
  assert shipped == sorted(SHIPPED + CONVERTED + DEEP)
  on_disk = sorted(os.listdir(os.path.join(ROOT, "registry", "checkpoints")))
  assert on_disk == sorted(SHIPPED + CONVERTED + DEEP + ("digits-classifier",))


def test_readme_table_is_generated_from_the_registry():
  text = open(os.path.join(ROOT, "README.md")).read()
  block = text.split(cards.TABLE_BEGIN, 1)[1].split(cards.TABLE_END, 1)[0].strip()
  assert block == cards.markdown_table(registry.all_entries())
  for name in SHIPPED:
    assert f"`{name}`" in block


# ------------------------------------------------------------------ sharding


_MESH_CODE = """
import sys, json
import jax, numpy as np
from nifzoo import zoo, mesh as mesh_lib
reg, name, images = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
m1 = zoo.load(name, registry=reg)
mesh = mesh_lib.make_mesh()
m8 = zoo.load(name, registry=reg, mesh=mesh)
leaf = m8.nif.A[...]
assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
x = mesh_lib.global_batch(mesh, images)
assert len(x.sharding.device_set) == 8
lp8 = jax.jit(lambda x: m8.log_prob(x))(x)
lp1 = m1.log_prob(images)
print(json.dumps(float(np.max(np.abs(np.asarray(lp8) - np.asarray(lp1))))))
"""


@pytest.mark.slow
def test_load_onto_an_8_device_mesh_matches_one_device(trained, images, tmp_path):
  _, reg, _ = trained
  np.save(tmp_path / "x.npy", images)
  out = subprocess.run([sys.executable, "-c", _MESH_CODE, reg, "digits-nif4-tiny",
                        str(tmp_path / "x.npy")], capture_output=True, text=True,
                       timeout=600, env=helpers.env_with_devices(8))
  assert out.returncode == 0, out.stderr[-3000:]
  assert float(out.stdout.strip().splitlines()[-1]) < 1e-5 * 200  # |log p| ~ 150 nats


# ------------------------------------------------------------------ packaging


def test_pyproject_lists_every_subpackage():
  pyproject = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
  listed = set(pyproject["tool"]["setuptools"]["packages"])
  found = {os.path.relpath(d, ROOT).replace(os.sep, ".")
           for d, _, files in os.walk(os.path.join(ROOT, "nifzoo"))
           if "__init__.py" in files}
  # nifzoo._registry and nifzoo._configs: registry/ and configs/, mapped in.
  assert found | {"nifzoo._registry", "nifzoo._configs"} == listed


@pytest.mark.slow
def test_registry_is_found_after_a_plain_pip_install(tmp_path):
  """A non-editable install (a wheel built as pip builds it, in an isolated
  build environment) into its own directory, imported from there with this
  environment's other packages: works in a fresh venv too, whatever its
  setuptools. In that fresh process every shipped model loads, samples, and
  scores the test split's bits/dim its registry entry states."""
  target = tmp_path / "site"
  out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", str(target), ROOT], capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  code = ("import nifzoo, jax\nfrom nifzoo import zoo\n"
          f"assert nifzoo.__file__.startswith({str(target)!r}), nifzoo.__file__\n"
          "print(len(zoo.list()))\nprint(zoo.info('celeba-nif128'))\n"
          "m = zoo.load('digits-nif16')\n"
          "print(m.sample(jax.random.key(0), 4, noise_scale=0.0).shape)\n"
          # A notebook's zoo.load pulls in neither the training loop nor TensorFlow.
          "import sys\nassert 'tensorflow' not in sys.modules\n"
          "assert not [m for m in sys.modules if m.startswith('nifzoo.train')]\n"
          "from nifzoo import evaluate\n"
          f"for name in {SHIPPED!r}:\n"
          "  m = zoo.load(name)\n"
          "  x = m.sample(jax.random.key(0), 4, noise_scale=0.0)\n"
          "  assert x.shape == (4, 8, 8, 1), x.shape\n"
          "  r = evaluate.bits_per_dim(m, m.config.data, 'test', batch_size=300,\n"
          "                            max_images=300)\n"
          "  want = m.entry.metrics['test_bits_per_dim']['value']\n"
          "  assert abs(r['bits_per_dim'] - want) < 0.05, (name, r, want)\n"
          "print('every shipped model ok')\n")
  env = {**os.environ, "PYTHONPATH": str(target)}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(tmp_path), env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "every shipped model ok" in out.stdout
  assert "(4, 8, 8, 1)" in out.stdout and "fid = 34.46" in out.stdout
