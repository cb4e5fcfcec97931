"""notebooks/quickstart.ipynb runs end to end on CPU and shows what it says."""

import ast
import base64
import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
# The README shows it as the notebook's figure; launch/results_digits.py wrote it.
README_FIGURE = os.path.join(ROOT, "docs", "figures", "digits-samples.png")


def test_the_committed_notebook_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


def _result(cell):
  """The text of a cell's execute_result (its last expression)."""
  [out] = [o for o in cell.outputs if o.output_type == "execute_result"]
  return out.data["text/plain"]


@pytest.mark.slow
def test_quickstart_runs_and_every_cell_shows_a_picture_or_a_short_number(
    tmp_path, monkeypatch):
  # The kernel is this interpreter (its kernelspec runs `python`), and the
  # notebook's temporary PNGs land in tmp_path.
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep +
                     os.environ.get("PATH", ""))
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  code = [c for c in nb.cells if c.cell_type == "code"]
  for cell in code:
    assert cell.outputs, cell.source
    for out in cell.outputs:
      assert out.output_type in ("execute_result", "display_data"), (cell.source, out)
      assert "image/png" in out.data or len(out.data["text/plain"]) < 1000, out
  pictures = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
  assert len(pictures) == 5
  by_source = {c.source.splitlines()[0]: c for c in code}
  names = ast.literal_eval(_result(by_source["zoo.list()"]))
  assert {"digits-nf", "digits-nif16", "celeba-nif128"} <= set(names)
  # k of the NIF, D = 8 * 8 of the NF; an NF's samples do not depend on s.
  assert _result(code[2]) == "16" and _result(by_source['nf = zoo.load("digits-nf")']) == "64"
  assert float(_result(by_source["nf_samples = figures.samples_at(nf, (0.0, 1.0), n=36, key=KEY)"])) == 0.0
  # Test bits/dim (300 digits x 4 draws, another key) against the value the
  # training run measured and wrote into the registry entry.
  bpds = [ast.literal_eval(_result(c)) for c in code
          if "test_bits_per_dim(" in c.source.splitlines()[-1]]
  assert len(bpds) == 2
  for measured, registered in bpds:
    assert abs(measured - registered) < 0.01, (measured, registered)
  # Its NF-vs-NIF figure is the one the README shows (the same calls and key).
  [png] = [o.data["image/png"] for o in by_source[
      "six_by_six = lambda x: x.reshape(6, 6, *x.shape[1:])"].outputs]
  shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))
  readme = np.asarray(Image.open(README_FIGURE))
  assert shown.shape == readme.shape
  assert np.mean(np.any(shown != readme, axis=-1)) < 0.01
