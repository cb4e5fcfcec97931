"""Tests for nifzoo.data: sources, grain pipelines, iterator checkpoints.

tfds datasets are served by ``tfds.testing.mock_data`` (policy USE_CODE: no
metadata files, nothing downloads); it mocks ``tfds.data_source`` with random
uint8 images that are a deterministic function of the record index.
"""

import contextlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from nifzoo import data
from nifzoo.train import checkpoint

N_MOCK = 24


@contextlib.contextmanager
def mock_tfds(num_examples=N_MOCK):
  with tfds.testing.mock_data(num_examples=num_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def same_batches(a, b):
  return all(np.array_equal(x["image"], y["image"]) and
             np.array_equal(x["label"], y["label"]) for x, y in zip(a, b))


# ------------------------------------------------------------------ config


def test_default_data_config_fields():
  c = data.default_data_config("fashion_mnist")
  assert (c.image_shape, c.bits, c.num_levels, c.split) == ((28, 28, 1), 3, 8, "standard")
  c = data.default_data_config("celeb_a")
  assert (c.image_shape, c.num_levels, c.celeba_preprocess) == ((64, 64, 3), 8, "authors")
  assert data.default_data_config("cifar10").image_shape == (32, 32, 3)
  d = data.default_data_config("digits")
  assert (d.image_shape, d.num_levels) == ((8, 8, 1), 17)


def test_unknown_dataset_lists_known():
  c = data.default_data_config("digits")
  c.name = "mnist"
  with pytest.raises(ValueError, match="known datasets: digits, fashion_mnist"):
    data.get_source(c, "train")
  with pytest.raises(ValueError, match="known datasets"):
    data.default_data_config("imagenet")


def test_num_levels_must_match_bits():
  c = data.default_data_config("cifar10")
  c.num_levels = 16
  with pytest.raises(ValueError, match="2\\*\\*data.bits"):
    data.get_source(c, "train")


# ------------------------------------------------------------------ digits


def test_digits_split_sizes_values_labels():
  c = data.default_data_config("digits")
  train, test = data.get_source(c, "train"), data.get_source(c, "test")
  assert (len(train), len(test)) == (1497, 300)
  assert len(train) + len(test) == data.DIGITS_NUM_EXAMPLES == 1797
  images = np.concatenate([train.images, test.images])
  labels = np.concatenate([train.labels, test.labels])
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
  assert images.min() == 0 and images.max() == 16
  assert set(labels.tolist()) == set(range(10))
  ex = train[0]
  assert ex["image"].shape == (8, 8, 1) and ex["label"].dtype == np.int32
  # Fixed split: the same on every call, and train/test partition all images.
  from nifzoo.data import digits as digits_lib
  tr, te = digits_lib.digits_split_indices("train"), digits_lib.digits_split_indices("test")
  assert np.array_equal(tr, digits_lib.digits_split_indices("train"))
  assert sorted(np.concatenate([tr, te]).tolist()) == list(range(1797))


def test_digits_are_sklearns_and_load_without_importing_it(monkeypatch):
  from sklearn import datasets
  from nifzoo.data import digits as digits_lib
  bunch = datasets.load_digits()
  want = np.rint(bunch.images).astype(np.uint8)[..., None], bunch.target
  digits_lib.load_digits_arrays.cache_clear()
  monkeypatch.setattr(digits_lib, "_digits_csv", lambda: None)
  fallback = digits_lib.load_digits_arrays()
  digits_lib.load_digits_arrays.cache_clear()
  monkeypatch.undo()
  for got in (digits_lib.load_digits_arrays(), fallback):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
  # The CSV is read without `import sklearn` (about 2 s, it loads scipy).
  code = ("import sys; from nifzoo.data import digits; digits.load_digits_arrays(); "
          "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_digits_batches_and_paper_split():
  c = data.default_data_config("digits")
  b = take(data.make_dataset(c, "train", global_batch_size=64, seed=0), 1)[0]
  assert b["image"].shape == (64, 8, 8, 1) and b["image"].dtype == np.int32
  assert b["label"].shape == (64,) and b["label"].dtype == np.int32
  assert 0 <= b["image"].min() and b["image"].max() < 17
  c.split = "paper"
  sizes = [len(data.get_source(c, s)) for s in ("train", "validation", "test")]
  assert sizes == list(data.paper_split_sizes(1797)) == [1078, 359, 360]


def test_epochs_are_reshuffled():
  c = data.default_data_config("digits")
  batches = take(data.make_dataset(c, "test", global_batch_size=100, seed=3), 6)
  e1 = np.concatenate([b["image"] for b in batches[:3]])
  e2 = np.concatenate([b["image"] for b in batches[3:]])
  key = lambda imgs: sorted(x.tobytes() for x in imgs)
  assert key(e1) == key(e2)  # each epoch is the whole split ...
  assert not np.array_equal(e1, e2)  # ... in a new order.


# ------------------------------------------------------------------ tfds (mocked)


@pytest.mark.parametrize("name,shape", [("fashion_mnist", (28, 28, 1)),
                                        ("cifar10", (32, 32, 3)),
                                        ("celeb_a", (64, 64, 3))])
def test_tfds_batches_shape_dtype_range(name, shape):
  c = data.default_data_config(name)
  with mock_tfds():
    b = take(data.make_dataset(c, "train", global_batch_size=8, seed=0), 1)[0]
  assert b["image"].shape == (8,) + shape and b["image"].dtype == np.int32
  assert b["label"].shape == (8,) and b["label"].dtype == np.int32
  assert b["image"].min() >= 0 and b["image"].max() < c.num_levels
  assert b["image"].max() == c.num_levels - 1  # random mock pixels use every level


@pytest.mark.parametrize("name,bits", [("fashion_mnist", 3), ("cifar10", 3),
                                       ("cifar10", 5)])
def test_quantisation_matches_formula(name, bits):
  c = data.default_data_config(name)
  c.bits, c.num_levels = bits, 2**bits
  with mock_tfds():
    raw = tfds.data_source(name, split="train")
    src = data.get_source(c, "train")
    for i in (0, 5):
      x = raw[i]["image"]
      want = np.floor(x.astype(np.float64) / 2**(8 - bits)).astype(np.uint8)
      got = src[i]["image"]
      assert got.dtype == np.uint8 and np.array_equal(got, want)
      assert src[i]["label"] == raw[i]["label"]


def test_celeba_preprocessing_modes():
  c = data.default_data_config("celeb_a")
  with mock_tfds():
    raw = tfds.data_source("celeb_a", split="train")[2]["image"]
    assert raw.shape == (218, 178, 3)
    authors = data.get_source(c, "train")[2]["image"]
    c.celeba_preprocess = "center_crop"
    center = data.get_source(c, "train")[2]["image"]
  assert authors.shape == center.shape == (64, 64, 3)
  # Authors: every other pixel (109, 89) then rows 26:90, columns 12:76.
  assert np.array_equal(authors, raw[::2, ::2][26:90, 12:76] >> 5)
  assert not np.array_equal(authors, center)
  # center_crop is an area resize: a constant image stays constant, a ramp stays
  # monotone.
  flat = np.full((218, 178, 3), 200, np.uint8)
  assert np.all(data.celeba_center_crop(flat) == 200)
  ramp = np.broadcast_to(np.arange(218, dtype=np.uint8)[:, None, None], (218, 178, 3))
  col = data.celeba_center_crop(np.ascontiguousarray(ramp))[:, 0, 0].astype(int)
  assert np.all(np.diff(col) >= 0) and col[0] >= 39 and col[-1] <= 39 + 139


def test_seed_determinism():
  c = data.default_data_config("fashion_mnist")
  with mock_tfds():
    mk = lambda seed: data.make_dataset(c, "train", global_batch_size=4, seed=seed)
    a, b, other = take(mk(7), 4), take(mk(7), 4), take(mk(8), 4)
  assert same_batches(a, b)
  assert not same_batches(a, other)


def test_process_shards_are_disjoint():
  c = data.default_data_config("cifar10")
  seen = []
  with mock_tfds(num_examples=25):
    for index in (0, 1):
      ds = data.make_dataset(c, "test", global_batch_size=4, seed=0, repeat=False,
                             drop_remainder=False, process_index=index, process_count=2)
      batches = list(ds)
      assert all(b["image"].shape[0] <= 2 for b in batches)
      seen.append([x.tobytes() for b in batches for x in b["image"]])
  assert len(seen[0]) == len(seen[1]) == 12  # 25 // 2 each, one dropped
  assert len(set(seen[0])) == 12 and not set(seen[0]) & set(seen[1])


def test_batch_must_divide_process_count():
  c = data.default_data_config("digits")
  with pytest.raises(ValueError, match="not divisible by the number of processes"):
    data.make_dataset(c, "train", global_batch_size=5, seed=0, process_index=0,
                      process_count=2)


def test_paper_split_sizes_and_disjoint():
  c = data.default_data_config("fashion_mnist")
  c.split = "paper"
  with mock_tfds(num_examples=N_MOCK):  # train + test = 48 examples
    parts = {s: data.get_source(c, s) for s in ("train", "validation", "test")}
    b = take(data.make_dataset(c, "validation", global_batch_size=4, seed=0), 1)[0]
  assert b["image"].shape == (4, 28, 28, 1)
  n = 2 * N_MOCK
  assert tuple(len(p) for p in parts.values()) == data.paper_split_sizes(n)
  assert data.paper_split_sizes(70000) == (42000, 14000, 14000)
  idx = [set(p.indices.tolist()) for p in parts.values()]
  assert not (idx[0] & idx[1] or idx[0] & idx[2] or idx[1] & idx[2])
  assert set().union(*idx) == set(range(n))
  # Fixed: train is the first 60% of one fixed permutation.
  assert np.array_equal(parts["train"].indices, data.paper_split_indices(n, "train"))


def test_validation_needs_paper_split():
  c = data.default_data_config("fashion_mnist")
  with pytest.raises(ValueError, match="only with data.split='paper'"):
    data.get_source(c, "validation")


def test_shape_mismatch_names_both_shapes():
  c = data.default_data_config("fashion_mnist")
  c.image_shape = (32, 32, 1)
  with mock_tfds(), pytest.raises(ValueError, match=r"\(28, 28, 1\).*\(32, 32, 1\)"):
    data.get_source(c, "train")


@pytest.mark.parametrize("name", ["fashion_mnist", "celeb_a"])
def test_unprepared_dataset_says_how_to_prepare(name, tmp_path):
  c = data.default_data_config(name)
  c.data_dir = str(tmp_path)
  with pytest.raises(data.DatasetNotPreparedError) as e:
    data.get_source(c, "train")
  msg = str(e.value)
  assert name in msg and str(tmp_path) in msg
  assert f"tfds build {name} --data_dir={tmp_path} --file_format=array_record" in msg
  assert isinstance(e.value, FileNotFoundError)
  if name == "celeb_a":
    assert "Google Drive" in msg


# ------------------------------------------------------------------ iterator state


def _digits_ds(process_index=None, process_count=None):
  return data.make_dataset(data.default_data_config("digits"), "train",
                           global_batch_size=16, seed=1, process_index=process_index,
                           process_count=process_count)


def test_iterator_state_round_trip():
  it = iter(_digits_ds(1, 2))
  take(it, 3)
  state = it.get_state()
  want = take(it, 3)
  it2 = iter(_digits_ds(1, 2))
  it2.set_state(state)
  assert same_batches(want, take(it2, 3))


def test_iterator_position_counts_batches():
  """The training iterator's position after n batches is n."""
  it = iter(_digits_ds())
  take(it, 3)
  assert it.get_state()["next_index"] == 3


def test_iterator_checkpoint_through_orbax(tmp_path):
  """nifzoo.train.checkpoint saves the iterator with grain's handler (one file per
  process) and refuses, clearly, a checkpoint from another number of processes."""
  it = iter(_digits_ds())
  take(it, 5)
  state = {"w": np.arange(3.0)}
  mngr = checkpoint.manager(str(tmp_path), max_to_keep=2)
  checkpoint.save(mngr, 5, state, it)
  mngr.wait_until_finished()
  want = take(it, 3)
  item_dir = tmp_path / "checkpoints" / "5" / "data"
  assert (item_dir / "process_0-of-1.json").exists()

  fresh = iter(_digits_ds())
  restored = checkpoint.restore(mngr, 5, state, fresh)
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert same_batches(want, take(fresh, 3))

  # As if written by a 2-process run: a restart with 1 process fails clearly.
  (item_dir / "process_0-of-1.json").rename(item_dir / "process_0-of-2.json")
  with pytest.raises(ValueError, match=r"saved by 2 process\(es\) but this run has 1"
                     r".*same number of processes"):
    checkpoint.restore(mngr, 5, state, iter(_digits_ds()))
  mngr.close()


def test_tfds_iterator_round_trip():
  c = data.default_data_config("cifar10")
  with mock_tfds():
    ds = data.make_dataset(c, "train", global_batch_size=4, seed=0)
    it = iter(ds)
    take(it, 7)  # crosses an epoch boundary (24 examples = 6 batches)
    state = it.get_state()
    want = take(it, 3)
    it2 = iter(ds)
    it2.set_state(state)
    assert same_batches(want, take(it2, 3))


def test_celeba_authors_crop_rows_and_columns():
  """On an image whose pixels encode their coordinates, the authors' crop
  ``im[::2, ::2][26:-19, 12:-13]`` keeps source rows 52, 54, ..., 178 and
  columns 24, 26, ..., 150."""
  rows, cols = np.meshgrid(np.arange(218), np.arange(178), indexing="ij")
  image = np.stack([rows // 2, cols // 2, np.zeros_like(rows)], -1).astype(np.uint8)
  out = data.celeba_authors(image)
  assert out.shape == (64, 64, 3)
  np.testing.assert_array_equal(out[:, 0, 0], np.arange(26, 90))
  np.testing.assert_array_equal(out[0, :, 1], np.arange(12, 76))
  with pytest.raises(ValueError, match="218, 178"):
    data.celeba_authors(image[:100])
