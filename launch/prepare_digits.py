r"""Writes the digits as a prepared tfds dataset (ArrayRecord) into a data_dir.

  python launch/prepare_digits.py --data_dir=gs://my-bucket/tensorflow_datasets
  python launch/train.py --config=configs/digits.py:nif16 --workdir=gs://.../runs/d \
      --config.data.data_dir=gs://my-bucket/tensorflow_datasets

The same images, labels and split order as the embedded copy, so a run reading
them from a bucket gives the same numbers as one reading scikit-learn's file: a
small stand-in for the paper's datasets, which a pod reads the same way
(`tfds build ... --file_format=array_record --data_dir=gs://...`).
"""

from absl import app
from absl import flags

_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir (local or gs://).")
flags.mark_flags_as_required(["data_dir"])


def main(argv):
  del argv
  from nifzoo.data import digits  # pylint: disable=g-import-not-at-top
  print(f"Wrote {digits.write_tfds(_DATA_DIR.value)}")


if __name__ == "__main__":
  app.run(main)
