# %% [markdown]
# # Whole datasets
#
# `camlens batch` explains every image of a folder, a glob, a list file or the built-in
# `shapes:N`, streaming: DataLoader worker processes decode and preprocess, the model runs on
# `--device`, a background thread writes Parquet shards of `--shard-size` images. Memory stays
# flat whatever the number of images.
#
# ```bash
# camlens batch INPUT --model NAME [--weights PATH] --methods gradcam layercam --out OUT
#               [--layer L] [--target C | --topk K] [--batch-size 64] [--workers N]
#               [--shard-size 1000] [--overlays] [--engine local|ray] [--ray-address ADDR]
#               [--device cpu|cuda]
# camlens batch shapes:5000 --model demo --methods gradcam --out out/batch   # offline
# camlens batch 'photos/**/*.jpg' --model resnet50 --weights r50.safetensors --topk 3 --out out/r50
# ```
#
# `INPUT` is a folder (searched recursively for .png, .jpg, ...), a glob, a text file with one
# path per line (relative to the file), or `shapes:N`. The same INPUT always gives the same
# ordered list, so shard `s` always holds the same images. `pip install 'camlens[batch]'` adds
# pyarrow; `camlens[ray]` adds Ray Data. All options:
# [`camlens batch`](../reference/cli.md#camlens-batch).
#
# The same job from Python (this page runs it at the site's build, on 96 images):

# %%
import tempfile
from pathlib import Path

import camlens.batch

out = Path(tempfile.mkdtemp()) / "batch"
summary = camlens.batch.run(
    "shapes:96", out, "demo", methods=["gradcam", "layercam"], topk=2, shard_size=32,
    workers=0, progress=False,
)
print(summary)
print(sorted(p.name for p in out.iterdir()))

# %% [markdown]
# ## Resumable
#
# Each shard is written to a temporary name and renamed when complete, so a job killed at any
# moment (Ctrl-C, `kill -9`, a lost node) leaves only whole shards; rerun the same command and
# it skips them and redoes the rest. Batches are cut per shard, so the resumed output equals an
# uninterrupted run's, row for row and bit for bit, when both use the same `--batch-size` and
# shard size on the same machine (tested with a real SIGKILL). With other batch cuts (another
# `--batch-size`, unreadable files dropped from a batch, the Ray engine's actors) rows, sources,
# classes and targets are the same and maps and scores equal within float rounding (a few
# float16 ulp): CPU kernels may round differently with the batch size or the thread count.
# Here a shard is lost and the job is run again:

# %%
(out / "shard-00001.parquet").unlink()
again = camlens.batch.run(
    "shapes:96", out, "demo", methods=["gradcam", "layercam"], topk=2, shard_size=32,
    workers=0, progress=False,
)
print("skipped", again.skipped, "written", again.written)

# %% [markdown]
# A rerun with other parameters into the same OUT is refused, with the differing parameter
# named:

# %%
try:
    camlens.batch.run("shapes:96", out, "demo", methods=["gradcam"], shard_size=32,
                      workers=0, progress=False)
except camlens.batch.JobMismatchError as err:
    print(err)

# %% [markdown]
# ## The output
#
# ```
# OUT/manifest.json          the job (parameters, sources sha256, weights sha256), versions, runs
# OUT/shard-00000.parquet    one row per image, method and target
# OUT/errors.csv             index, source, error: every file that could not be read
# OUT/overlays/*.png         with --overlays: 0000042_<stem>_<method>_r<rank>_c<class>.png
# ```
#
# | column | type | |
# |---|---|---|
# | `index` | int64 | position in INPUT's ordered list |
# | `source` | string | file path, or `shapes:N/i` |
# | `method`, `layer` | string | the method and the layer it explained |
# | `rank` | int16 | 1..K with `--topk K` (1 by default: the top class), 0 with `--target C` |
# | `target`, `score` | int64, float32 | the explained class id and its logit |
# | `map`, `map_shape` | binary, list<int32> | the raw map (before ReLU and upsampling) as float16 little-endian bytes, and its (h, w) |
# | `topk_classes`, `topk_probs` | list<int32>, list<float32> | the image's top-5 classes and softmax probabilities |
#
# ### With pandas

# %%
import numpy as np

res = camlens.batch.read(out)
df = res.to_pandas()
print(df.shape, res.complete)
print(df[["index", "source", "method", "rank", "target", "score"]].head(6).to_string())
row = df.iloc[0]
raw = np.frombuffer(row["map"], "<f2").reshape(row["map_shape"])
print("one raw map:", raw.shape, raw.dtype)

# %% [markdown]
# `res.maps("gradcam")` yields `(row, raw)` pairs lazily, one shard at a time; `res.errors`,
# `res.manifest` and `res.table()` (one pyarrow Table) give the rest.
#
# ### With DuckDB
#
# DuckDB queries the shards in place, without loading them (`pip install duckdb`):

# %%
import duckdb

print(duckdb.sql(f"""
    SELECT method, rank, count(*) AS n, round(avg(score), 3) AS mean_logit,
           round(avg(topk_probs[1]), 3) AS mean_top_prob
    FROM read_parquet('{out}/shard-*.parquet')
    GROUP BY method, rank ORDER BY method, rank
"""))

# %% [markdown]
# ## On a Ray cluster
#
# `--engine ray` runs the same job on Ray Data: the paths become a dataset, `map_batches`
# decodes, an actor pool explains (each actor builds the model once; one actor per GPU when the
# cluster has GPUs and `--device` is not cpu, else one per two CPUs), and the driver streams the
# rows back and writes each shard through the same atomic writer, so the shard, manifest and
# resume contract is the local engine's: a job started locally can be finished on Ray and the
# other way round, and the output equals the local engine's within float rounding (tested on a
# local Ray instance). Ray may fuse decoding into the actors.
#
# ```bash
# pip install 'camlens[ray]'                         # on every node (same camlens and torch)
# ray start --head                                   # head node; workers: ray start --address HEAD:6379
# camlens batch /shared/images --model resnet50 --weights /shared/r50.safetensors \
#     --methods gradcam --out /shared/out --engine ray --ray-address auto --device cuda
# ```
#
# Without `--ray-address` a local Ray instance is started. The input files, `--weights` and
# (with `--overlays`) OUT must be on storage every node sees; the Parquet shards are written by
# the driver. A batch job's unreadable files do not stop it: they are listed in `errors.csv`
# and counted in a warning.
