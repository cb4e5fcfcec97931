#!/usr/bin/env bash
# The ranges' lower bounds: into a fresh venv that already holds the oldest numpy,
# scipy, scikit-learn, pillow and matplotlib that pyproject.toml accepts (as a
# user's notebook environment might), install nifzoo; pip must keep them, and
# the fast tests must pass there. Everything else at constraints.txt's versions.
#   bash .ci/lower_bounds.sh        (LOWER_BOUNDS_VENV=dir to keep the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1
HELD="numpy scipy scikit-learn pillow matplotlib"
if [ -n "${LOWER_BOUNDS_VENV:-}" ]; then
  venv=$LOWER_BOUNDS_VENV
else
  tmp=$(mktemp -d -t nifzoo-lower-bounds-XXXX)
  trap 'rm -rf "$tmp"' EXIT
  venv=$tmp/venv
fi
# name==lower bound for each held package, read from pyproject.toml's ranges.
lower=$(python3 - $HELD <<'PY'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for name in sys.argv[1:]:
  [dep] = [d for d in deps if re.match(re.escape(name) + r"\s*[<>=!~\[;]", d)]
  low = re.search(r">=\s*([^,;\s]+)", dep).group(1)
  print(f"{name}=={low}")
PY
)
echo "lower bounds: $(echo $lower)"
python3 -m venv "$venv"
py="$venv/bin/python"
pip() {  # Outside the source tree, which holds nifzoo.egg-info: pip would see nifzoo.
  (cd "$venv" && env -u PYTHONPATH "$py" -m pip "$@")
}
pip install -q $lower
grep -v -E "^($(echo $HELD | tr ' ' '|'))==" constraints.txt > "$venv/constraints-others.txt"
pip install -q -e "$root[cpu,test]" -c "$venv/constraints-others.txt"
"$py" - $lower <<'PY'
import importlib.metadata, sys
for pin in sys.argv[1:]:
  name, want = pin.split("==")
  have = importlib.metadata.version(name)
  assert have == want, f"installing nifzoo changed {name} {want} -> {have}"
print("kept:", ", ".join(sys.argv[1:]))
PY
# The fast set (README), against the venv's packages only, without the files
# that exercise only storage clients, the workdir lease, TPU compiles and
# compiled-method dispatch (no numpy/scipy/scikit-learn/pillow/matplotlib code
# of ours there; the main run covers them at constraints.txt's versions).
env -u PYTHONPATH "$py" -m pytest -n 2 -m "not slow" tests \
  --ignore=tests/test_cloud.py --ignore=tests/test_gcs_clients.py \
  --ignore=tests/test_lease.py --ignore=tests/test_tpu.py \
  --ignore=tests/test_compiled.py
