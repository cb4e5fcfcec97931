"""gs:// everywhere, against the local GCS emulator (tests/conftest.py's `gcs`
fixture): workdirs, registries, checkpoints, metrics, evaluation and
conversion outputs, classifier and Inception weights, data.

This is the fast tier: every client in this process is gcsfs (etils' fsspec
backend, ``EPATH_USE_TF=false``) or tensorstore (Orbax's arrays), and the
training loop's writer is the JSON one (as without TensorFlow). The
tests with TensorFlow's ``tf.io.gfile`` in play (clu's TensorBoard writer, a
run written by one backend and read by the other) and the pod rehearsal are in
tests/test_cloud_pod.py (slow).
"""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from nifzoo import configs
from nifzoo import convert
from nifzoo import data
from nifzoo import fileio
from nifzoo import registry
from nifzoo import variables
from nifzoo import zoo
from nifzoo.evaluate import metrics
from nifzoo.train import checkpoint as ckpt_lib
from nifzoo.train import loop
from nifzoo.train import writers

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "digits-nif4-gcs"


def _json_writer(monkeypatch):
  """The training loop writes metrics.jsonl, as without TensorFlow (clu's
  writer would go through tf.io.gfile: tests/test_cloud_pod.py)."""
  monkeypatch.setattr(writers, "create_writer",
                      lambda workdir, just_logging=False, **_: writers.JsonWriter(
                          workdir, just_logging=just_logging))


def _tiny(total_steps):
  c = configs.get_config("digits-nif4,tiny")
  c.total_steps, c.checkpoint_every, c.sample_every, c.log_every = total_steps, 2, 2, 1
  c.eval_batches = 1
  return c


@pytest.fixture(scope="module")
def gs_run(gcs, tmp_path_factory):
  """A 4-step run in a gs:// workdir (checkpoints 2 and 4), registered into a
  gs:// registry: (workdir, registry, result)."""
  mp = pytest.MonkeyPatch()
  _json_writer(mp)
  cwd = os.getcwd()
  os.chdir(tmp_path_factory.mktemp("cwd"))  # Where a wrong local write would land.
  try:
    workdir, reg = gcs.prefix("run"), gcs.prefix("reg")
    result = loop.train_and_evaluate(_tiny(4), workdir)
    registry.register(workdir, reg, name=NAME, command="pytest",
                      metrics=metrics.bits_per_dim_metric(result["test_eval"], "pytest"))
    assert not os.listdir("."), os.listdir(".")  # Nothing went to the local disk.
  finally:
    os.chdir(cwd)
    mp.undo()
  return workdir, reg, result


@pytest.fixture(scope="module")
def images():
  src = data.get_source(configs.get_config("digits-nif4").data, "test")
  return np.stack([src[i]["image"] for i in range(8)]).astype(np.int32)


def _log_prob(model, images):
  return np.asarray(model.log_prob(images, key=jax.random.key(1)))


# ------------------------------------------------------------------ paths


def test_search_path_keeps_urls_whole(monkeypatch):
  assert registry.split_search_path("gs://b/reg:~/reg::/x") == [
      "gs://b/reg", "~/reg", "/x"]
  monkeypatch.setenv(registry.ENV_VAR, "gs://b/reg")
  assert registry.search_path()[0] == "gs://b/reg"
  assert fileio.join("gs://b/reg", "entries", "x.json") == "gs://b/reg/entries/x.json"
  assert registry.Entry({"name": "x", "checkpoint": {"uri": "checkpoints/x"}},
                        "gs://b/reg").checkpoint_path() == "gs://b/reg/checkpoints/x"


def test_gs_backend_without_tensorflow_is_declared():
  import tomllib  # pylint: disable=g-import-not-at-top
  extras = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))[
      "project"]["optional-dependencies"]
  assert any(r.startswith("gcsfs") for r in extras["gcs"])
  assert "nifzoo[gcs]" in extras["tpu"]


def test_files_hash_alike_with_and_without_directory_placeholders(gcs_path):
  """TF (and the Cloud Console) write zero-byte ``dir/`` objects; gcsfs lists
  them as an unnamed child. The hash and the file list ignore them."""
  import fsspec  # pylint: disable=g-import-not-at-top
  for rel, text in (("a.txt", "1"), ("d/b.txt", "22"), ("d/e/c.txt", "333")):
    fileio.write_text(f"{gcs_path}/{rel}", text)
  before = variables.hash_directory(gcs_path)
  fs = fsspec.filesystem("gcs")
  for d in ("", "d/", "d/e/"):
    fs.pipe(f"{gcs_path[len('gs://'):]}/{d}", b"")
  fs.invalidate_cache()
  assert list(fileio.list_files(gcs_path)) == ["a.txt", "d/b.txt", "d/e/c.txt"]
  assert variables.hash_directory(gcs_path) == before
  with pytest.raises(FileNotFoundError):
    variables.hash_directory(gcs_path + "-missing")


def test_listings_see_writes_by_other_clients(gcs_path):
  """Orbax's arrays (tensorstore) and other processes write behind gcsfs's
  back: a listing must still show them (a trainer must see its newest step)."""
  import fsspec  # pylint: disable=g-import-not-at-top
  fileio.write_text(f"{gcs_path}/checkpoints/2/x", "2")
  assert [p.name for p in fileio.as_path(f"{gcs_path}/checkpoints").iterdir()] == ["2"]
  other = fsspec.filesystem("gcs", skip_instance_cache=True)  # Another client.
  other.pipe(f"{gcs_path[len('gs://'):]}/checkpoints/4/x", b"4")
  assert variables.latest_step(gcs_path) == 4
  assert list(fileio.list_files(f"{gcs_path}/checkpoints")) == ["2/x", "4/x"]


def test_metrics_file_keeps_every_record_on_gs(gcs_path):
  """gcsfs cannot append (it overwrites): every record must survive, and a
  resumed run's writer keeps the earlier lines."""
  w = writers.JsonWriter(gcs_path)
  w.write_hparams({"lr": 0.1})
  w.write_scalars(1, {"a": 1.0})
  w.write_scalars(2, {"a": 2.0})
  w2 = writers.JsonWriter(gcs_path)  # A resumed run.
  w2.write_scalars(3, {"a": 3.0})
  lines = fileio.as_path(f"{gcs_path}/{writers.METRICS_FILE}").read_text().splitlines()
  assert [json.loads(l) for l in lines] == [
      {"hparams": {"lr": 0.1}}, {"step": 1, "a": 1.0}, {"step": 2, "a": 2.0},
      {"step": 3, "a": 3.0}]


def test_move_tree_into_a_new_folder_keeps_every_file(gcs_path):
  fileio.write_text(f"{gcs_path}/src/x/a", "a")
  fileio.write_text(f"{gcs_path}/src/b", "b")
  fileio.move_tree(f"{gcs_path}/src", f"{gcs_path}/new/folder/src")
  assert list(fileio.list_files(gcs_path)) == ["new/folder/src/b", "new/folder/src/x/a"]
  assert fileio.as_path(f"{gcs_path}/new/folder/src/x/a").read_text() == "a"


# ------------------------------------------------------------------ training


def test_a_gs_run_writes_everything_to_the_bucket(gs_run):
  workdir, _, result = gs_run
  files = fileio.list_files(workdir)
  for f in (variables.CONFIG_FILE, variables.WIRING_FILE, writers.METRICS_FILE,
            "samples/samples_s0_0000002.png", "samples/samples_s1_0000004.png",
            f"checkpoints/2/{variables.CHECKSUMS_FILE}",
            f"checkpoints/4/{variables.CHECKSUMS_FILE}"):
    assert f in files, (f, list(files))
  steps = [json.loads(l).get("step") for l in
           files[writers.METRICS_FILE].read_text().splitlines()]
  assert [s for s in steps if s] == [1, 2, 2, 3, 4, 4]  # Train + test lines, all kept.
  assert variables.verify_checksums(f"{workdir}/checkpoints/4")
  assert np.isfinite(result["test_eval"]["bits_per_dim"])


def test_registry_on_gs_registers_lists_and_loads(gs_run, images, monkeypatch):
  workdir, reg, _ = gs_run
  path = registry.entry_path(reg, NAME)
  assert path.startswith("gs://") and fileio.as_path(path).exists()
  entry = registry.find(NAME, reg)
  assert entry.checkpoint_path() == f"{reg}/checkpoints/{NAME}"
  assert NAME in zoo.list(registry=reg)
  assert "test_bits_per_dim" in entry.metrics
  from_reg = zoo.load(NAME, registry=reg)
  from_workdir = zoo.load(workdir)
  np.testing.assert_array_equal(_log_prob(from_reg, images),
                                _log_prob(from_workdir, images))
  monkeypatch.setenv(registry.ENV_VAR, f"{reg}{os.pathsep}/nonexistent")
  assert registry.find(NAME).directory == reg
  np.testing.assert_array_equal(_log_prob(zoo.load(NAME), images),
                                _log_prob(from_reg, images))


def test_reregistering_and_updating_metrics_on_gs(gs_run, gcs_path, images):
  workdir, _, _ = gs_run
  for _ in range(2):  # The second replaces the first: no "already exists".
    registry.register(workdir, gcs_path, name=NAME, command="pytest")
  registry.update_metrics(NAME, {"x": {"value": 1.0, "command": "pytest"}}, gcs_path)
  registry.update_metrics(NAME, {"y": {"value": 2.0, "command": "pytest"}}, gcs_path)
  entry = registry.find(NAME, gcs_path)
  assert set(entry.metrics) == {"x", "y"}
  zoo.verify_hash(entry.checkpoint_path(), entry.checkpoint["sha256"], entry.path)
  # A packaged entry's metrics merged into a gs:// registry keep its checkpoint.
  registry.update_metrics("digits-nif16", {"x": {"value": 1.0, "command": "t"}},
                          gcs_path)
  copied = registry.find("digits-nif16", gcs_path)
  assert copied.directory == gcs_path
  assert copied.checkpoint_path() == registry.find("digits-nif16").checkpoint_path()


def test_a_checkpoint_with_directory_placeholders_loads(gs_run, gcs_path, images):
  """A run or registry written where TensorFlow was installed (zero-byte
  ``dir/`` objects) loads, verifies and registers where it is not."""
  import fsspec  # pylint: disable=g-import-not-at-top
  workdir, reg, _ = gs_run
  fileio.copy_tree(workdir, f"{gcs_path}/run")
  fileio.copy_tree(reg, f"{gcs_path}/reg")
  fs = fsspec.filesystem("gcs")
  for p in list(fileio.list_files(gcs_path)):
    parts = p.split("/")[:-1]
    for i in range(1, len(parts) + 1):
      fs.pipe(f"{gcs_path[len('gs://'):]}/{'/'.join(parts[:i])}/", b"")
  fs.invalidate_cache()
  want = _log_prob(zoo.load(NAME, registry=reg), images)
  np.testing.assert_array_equal(
      _log_prob(zoo.load(NAME, registry=f"{gcs_path}/reg"), images), want)
  np.testing.assert_array_equal(_log_prob(zoo.load(f"{gcs_path}/run"), images), want)
  assert variables.verify_checksums(f"{gcs_path}/run/checkpoints/4")
  registry.register(f"{gcs_path}/run", f"{gcs_path}/reg2", name=NAME, command="t")


@pytest.mark.slow
def test_damaged_newest_checkpoint_on_gs_is_moved_aside_and_skipped(
    gs_run, gcs_path, monkeypatch, caplog):
  workdir = f"{gcs_path}/run"
  fileio.copy_tree(gs_run[0], workdir)
  files = fileio.list_files(f"{workdir}/checkpoints/4/state")
  target = max((p for rel, p in files.items() if "/d/" in f"/{rel}"),
               key=lambda p: len(p.read_bytes()))
  raw = bytearray(target.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  target.write_bytes(bytes(raw))
  _json_writer(monkeypatch)
  result = loop.train_and_evaluate(_tiny(6), workdir)
  assert np.isfinite(result["test_eval"]["bits_per_dim"])
  assert "does not match its checksum" in caplog.text
  moved = f"{workdir}/{ckpt_lib.DAMAGED_DIR}/4"
  assert fileio.as_path(moved).is_dir()  # Kept, never deleted.
  with pytest.raises(variables.CheckpointError, match="does not match its checksum"):
    variables.verify_checksums(moved)
  assert sorted(p.name for p in fileio.as_path(f"{workdir}/checkpoints").iterdir()
                if p.name.isdigit()) == ["2", "4", "6"]  # 4 again, from step 2.


# ------------------------------------------------------------------ outputs


def test_evaluation_outputs_go_to_gs(gs_run, gcs_path):
  from nifzoo import evaluate  # pylint: disable=g-import-not-at-top
  _, reg, _ = gs_run
  out = evaluate.run(NAME, {
      "evals": {"bpd": {"num_draws": 1}, "figures": {}},
      "outdir": f"{gcs_path}/eval", "registry": [reg], "batch_size": 64,
      "write_metrics": reg, "progress": False})
  saved = fileio.read_json(f"{gcs_path}/eval/metrics.json")
  assert saved["metrics"] == json.loads(json.dumps(out["metrics"]))
  for f in ("samples_s0.png", "reconstructions.png"):
    with fileio.as_path(f"{gcs_path}/eval/{f}").open("rb") as fh:
      assert Image.open(fh).format == "PNG"
  assert registry.find(NAME, reg).metrics["test_bits_per_dim"]["num_draws"] == 1
  from nifzoo.evaluate import tables  # pylint: disable=g-import-not-at-top
  md, js = tables.write([{"name": NAME, "fd": 1.0, "s_star": 0.5, "fd_s1": 2.0,
                          "paper_fid": None, "bits_per_dim": 2.0,
                          "paper_bits_per_dim": None, "probe_accuracy": None,
                          "features": "classifier"}],
                        f"{gcs_path}/tables")
  assert md.startswith("gs://") and "`digits-nif4-gcs`" in fileio.as_path(md).read_text()
  assert fileio.read_json(js)[0]["name"] == NAME


def test_conversion_output_on_gs_loads(gs_run, gcs_path, images):
  model, report = convert.nf_to_nif(helpers.tiny_nf(), 2, max_images=64)
  out = convert.save_workdir(model, report, f"{gcs_path}/conv")
  assert sorted(fileio.list_files(out))[:2] == ["config.json", "convert.json"]
  np.testing.assert_array_equal(_log_prob(zoo.load(out), images),
                                _log_prob(model, images))


def test_classifier_and_inception_weights_from_gs(gcs_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import classifier, inception  # pylint: disable=g-import-not-at-top
  clf = classifier.Classifier((8, 8, 1), 10, (16, 4), rngs=nnx.Rngs(0))
  info = {"image_shape": [8, 8, 1], "num_classes": 10, "hidden": [16, 4]}
  classifier.save_classifier(clf, f"{gcs_path}/clf", info)
  loaded, got = classifier.load_classifier(f"{gcs_path}/clf")
  assert got == info
  y = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(loaded(y)), np.asarray(clf(y)))
  with pytest.raises(FileNotFoundError, match="No classifier"):
    classifier.load_classifier(f"{gcs_path}/none")
  with pytest.raises(FileNotFoundError, match="not found"):
    inception.load_inception(f"{gcs_path}/none.npz")
  fileio.as_path(f"{gcs_path}/junk.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="Could not read"):
    inception.load_inception(f"{gcs_path}/junk.npz")


def test_weights_npz_round_trip_through_gs(gcs_path):
  import io  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import inception  # pylint: disable=g-import-not-at-top
  net = inception.InceptionV3FID(resize=75, seed=0)
  sd = inception.torch_state_dict(net)
  buf = io.BytesIO()
  np.savez(buf, **sd)
  fileio.as_path(f"{gcs_path}/w.npz").write_bytes(buf.getvalue())
  loaded = inception.load_inception(f"{gcs_path}/w.npz", resize=75)
  assert inception.torch_state_dict(loaded).keys() == sd.keys()
  for k, v in inception.torch_state_dict(loaded).items():
    np.testing.assert_array_equal(v, sd[k])


# ------------------------------------------------------------------ data


def test_digits_from_a_gs_data_dir_equal_the_embedded_ones(gcs_path):
  from nifzoo.data import digits  # pylint: disable=g-import-not-at-top
  digits.write_tfds(gcs_path)
  c = configs.get_config("digits-nif4")
  c.data.data_dir = gcs_path
  for split in ("train", "test"):
    src, ref = data.get_source(c.data, split), digits.digits_source(split)
    assert len(src) == len(ref)
    for i in (0, 7, len(ref) - 1):
      np.testing.assert_array_equal(src[i]["image"], ref[i]["image"])
      assert src[i]["label"] == ref[i]["label"]
  batch = next(iter(data.make_dataset(c.data, "train", global_batch_size=16, seed=0,
                                      shuffle=True, repeat=False)))
  c.data.data_dir = None
  ref = next(iter(data.make_dataset(c.data, "train", global_batch_size=16, seed=0,
                                    shuffle=True, repeat=False)))
  np.testing.assert_array_equal(batch["image"], ref["image"])


# ------------------------------------------------------------------ the pod script


def test_train_pod_dry_run_prints_the_gcloud_commands(tmp_path):
  """launch/tpu/train_pod.sh with DRY_RUN=1 prints what it would run, and a
  gcloud on the PATH is never called (this one fails the test if it is)."""
  import shlex  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  fake = tmp_path / "gcloud"
  fake.write_text("#!/bin/sh\necho called >&2\nexit 9\n")
  fake.chmod(0o755)
  env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "DRY_RUN": "1", "PROJECT_ID": "proj",
         "ZONE": "europe-west4-b", "TPU_NAME": "pod", "BUCKET": "gs://bkt",
         "REGISTRY": "gs://bkt/registry", "CONFIG": "configs/celeba.py:nif64"}
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu", "train_pod.sh"),
                        "all"], env=env, capture_output=True, text=True, check=True)
  assert "called" not in out.stderr
  cmds = [shlex.split(l) for l in out.stdout.splitlines()]
  assert [c[:5] for c in cmds] == [["gcloud", "compute", "tpus", "tpu-vm", v]
                                   for v in ("create", "ssh", "ssh")]
  assert "--accelerator-type=v5litepod-32" in cmds[0]
  for c in cmds[1:]:
    assert {"--worker=all", "--project=proj", "--zone=europe-west4-b"} <= set(c)
  assert "'.[tpu,tensorboard]'" in cmds[1][-1]  # libtpu and gcsfs.
  train = shlex.split(cmds[2][-1].partition("&&")[2].partition("2>&1")[0])
  assert train[:3] == ["python3", "launch/train.py", "--distributed"]
  assert {"--config=configs/celeba.py:nif64", "--workdir=gs://bkt/runs/celeba-nif64",
          "--config.data.data_dir=gs://bkt/tensorflow_datasets",
          "--register=gs://bkt/registry", "--name=celeba-nif64"} <= set(train)
