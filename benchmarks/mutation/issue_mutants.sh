#!/usr/bin/env bash
# Apply each one-line change listed in issue 19 to a scratch copy of src/ and run the changed
# module's own tests: every line must print KILLED. Usage: benchmarks/mutation/issue_mutants.sh
set -u
cd "$(dirname "$0")/../.."
PY=${PY:-python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0

check() {  # check NAME FILE OLD NEW TESTS...
  local name=$1 file=$2 old=$3 new=$4
  shift 4
  rm -rf "$scratch/src" && cp -r src "$scratch/src"
  OLD="$old" NEW="$new" "$PY" - "$scratch/$file" <<'PYEOF' || { echo "NOT APPLIED $name"; status=1; return; }
import os, sys
path = sys.argv[1]
text = open(path).read()
old, new = os.environ["OLD"], os.environ["NEW"]
if text.count(old) != 1:
    sys.exit(f"{path}: {old!r} found {text.count(old)} times")
open(path, "w").write(text.replace(old, new))
PYEOF
  if PYTHONPATH="$scratch/src" OMP_NUM_THREADS=1 "$PY" -m pytest -x -q -p no:cacheprovider \
      -o addopts= "$@" >"$scratch/log" 2>&1; then
    echo "SURVIVED $name"; status=1
  else
    echo "KILLED   $name: $(grep -m1 -oE '^FAILED [^ ]+' "$scratch/log")"
  fi
}

G=src/camlens/cams/gradient.py
check "gradcampp zero-denominator fallback 0 -> 1" $G \
  'torch.ones_like(denom)), 0.0)' 'torch.ones_like(denom)), 1.0)' tests/cams tests/test_peers.py
check "gradcampp 2 d2 + A d3" $G 'denom = 2 * d2 + sum_acts * d3' 'denom = 2 * d2 + acts * d3' \
  tests/cams/test_family.py tests/test_peers.py
check "layercam ReLU(g A)" $G '    return grads.clamp(min=0) * acts' \
  '    return (grads * acts).clamp(min=0)' tests/cams tests/test_peers.py
check "scorecam constant channels scored 0" src/camlens/cams/score.py \
  'out[:] = _black_scores(probe).view(bsz, 1, 1, *per)' 'out[:] = 0' tests/cams
check "eigengradcam computed as eigencam" src/camlens/cams/eigen.py \
  'return first_component_projection(grads * acts)' 'return first_component_projection(acts)' \
  tests/cams
check "multi-layer fusion replaced by the last layer" src/camlens/display.py \
  'maps = minmax(fuse_layers(flat, size))' 'maps = to_heatmap(flat[-1], size)' tests/test_engine.py
check "token grid: the patch embedding's grid ignored" src/camlens/layouts.py \
  '    if patch_grid:' '    if False:' tests/test_layouts.py tests/test_layouts_units.py \
  tests/test_model_kinds.py
check "at most 15 prefix tokens" src/camlens/layouts.py 'MAX_PREFIX = 16' 'MAX_PREFIX = 15' \
  tests/test_layouts.py tests/test_layouts_units.py tests/test_model_kinds.py
check "gradcam++ resolving to gradcam" src/camlens/registry.py 'key.replace("++", "pp")' \
  'key.replace("++", "")' tests/test_registry.py
check "the app's cancel a no-op" src/camlens/app/state.py \
  '"""Ask a job to stop; it stops before its next forward pass."""' \
  '"""Ask a job to stop; it stops before its next forward pass."""
        return self.job(job_id)' tests/app/test_server.py
exit $status
