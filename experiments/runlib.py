"""What every reproduction script does per row (train one config with the one
trainer, then read back its speed and size) and the table it writes."""
from __future__ import annotations

import json
import os
import time

# configs/default.py args that pin the recipe the committed Sort-of-CLEVR
# tables (experiments/results/sort_of_clevr_*, fusion_ablation_*) were
# measured with: 10 questions per image, weight decay 1e-4. The default
# job's recipes of 2026-12-05 (30 questions, weight decay 0.05; then each
# distinct question encoded once, on one CPU device; 2026-12-06: sin-cos
# temperature 10, warmup-stable-decay schedule) replaced it; pinning
# keeps a resumed table from mixing them. `soc_table_config` applies it.
SOC_TABLE_RECIPE = "questions=10,wd=0.0001"


def soc_table_config(arg: str = ""):
  """configs/default.py with config args `arg` and the committed tables'
  recipe: SOC_TABLE_RECIPE, every question row encoded (unique_texts=0),
  sin-cos temperature 30, the cosine schedule and two XLA CPU devices (a
  script's --cpu_devices may override)."""
  from mmtx.configs import default
  cfg = default.get_config(",".join(filter(None, [arg, SOC_TABLE_RECIPE])))
  with cfg.unlocked():
    cfg.model.unique_texts = 0
    cfg.model.image.posemb_temperature = 30.0
    cfg.optimizer.schedule = "cosine"
    cfg.mesh.cpu_devices = 2
  return cfg


def train_run(cfg, workdir: str, mode: str = "train") -> dict:
  """Trains `cfg` in `workdir` (resuming if it has checkpoints; mode='eval'
  only evaluates its latest checkpoint) and returns
  {'metrics': final eval metrics, 'wall_s', 'examples_per_sec' (median of
  the logged windows after the first, which holds the compile; examples are
  the batch's rows: images when data.questions_per_image > 0),
  'questions_per_sec' (the same times questions_per_image), 'params'}."""
  import jax
  import numpy as np
  from absl import logging
  from mmtx import sharding, tasks, train
  # As mmtx.main does; only takes effect if JAX has not started yet (the
  # first row of a script run), otherwise make_mesh warns.
  sharding.set_cpu_sync_dispatch()
  sharding.set_cpu_devices(cfg.mesh.get("cpu_devices", 0))
  logging.set_verbosity(logging.WARNING)
  task = tasks.build_task(cfg)
  first = max(checkpoint_steps(workdir), default=0)
  start = time.time()
  try:
    metrics = train.train_and_evaluate(cfg, workdir, task, mode=mode,
                                       progress=False)
  except train.Preempted:   # SIGTERM: saved; the check below stops the script
    metrics = {}
  wall = time.time() - start
  last = max(checkpoint_steps(workdir), default=0)
  if mode == "train":
    wall = _training_wall(workdir, wall, resumed=first > 0,
                          trained=last > first)
  if mode == "train" and last < cfg.total_steps:
    # Stopped early (SIGTERM): do not report a row for an unfinished run;
    # the same command resumes it from the checkpoint.
    raise SystemExit(f"{workdir}: training stopped at step {last} of "
                     f"{cfg.total_steps}; rerun the same command to resume.")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  if not metrics:   # finished before this call: nothing trained, no eval
    metrics = {k[len("eval/"):]: v for r in rows if r.get("step") == last
               for k, v in r.items() if k.startswith("eval/")}
  speeds = [r["train/examples_per_sec"] for r in rows
            if "train/examples_per_sec" in r][1:]
  batch = task.init_batch()
  shapes = jax.eval_shape(
      lambda: task.init_variables(jax.random.key(0), batch))["params"]
  per_sec = float(np.median(speeds)) if speeds else None
  q = max(int(cfg.data.get("questions_per_image", 0)), 1)
  return {"metrics": metrics, "wall_s": wall, "examples_per_sec": per_sec,
          "questions_per_sec": per_sec * q if per_sec else None,
          "params": int(sum(x.size for x in jax.tree_util.tree_leaves(shapes)))}


def _training_wall(workdir: str, wall: float, resumed: bool,
                   trained: bool) -> float:
  """The training wall time of the run in `workdir` over every call that
  trained it (WORKDIR/wall_s.json), so a resumed or already finished run
  reports the time it took, not the time of the last call."""
  path = os.path.join(workdir, "wall_s.json")
  prev = None
  if resumed and os.path.exists(path):
    with open(path) as f:
      prev = float(json.load(f)["wall_s"])
  if not trained and prev is not None:
    return prev
  total = wall + (prev or 0.0)
  with open(path, "w") as f:
    json.dump({"wall_s": total}, f)
  return total


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints in WORKDIR/checkpoints, ascending
  (orbax names each folder by its step; a save in progress carries a tmp
  suffix and is not listed). [] when there are none."""
  ckdir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckdir):
    return []
  return sorted(int(d) for d in os.listdir(ckdir) if d.isdigit())


def row_key(row: dict) -> tuple:
  """What makes two result rows the same run: (name, seed, steps)."""
  return (row["name"], row.get("seed", 0), row.get("steps"))


def load_results(path: str) -> dict:
  """A script's whole OUT/results.json ({'rows': [...], other entries});
  {} if there is no file."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load_rows(path: str) -> dict:
  """The rows an earlier run of a script stored in `path` (its
  OUT/results.json), by `row_key`, in stored order; {} if there is no file.
  Scripts skip a row already there, so rerunning a stopped command resumes
  and rows run at different times make one table."""
  return {row_key(r): r for r in load_results(path).get("rows", [])}


def save_rows(path: str, rows, **extra) -> None:
  """Writes {'rows': rows, **extra} to `path` (replaced atomically, so a
  script stopped mid-write keeps the previous file)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"rows": list(rows), **extra}, f, indent=1, default=float)
  os.replace(tmp, path)


def fusion_names(text: str, script: str) -> list[str]:
  """A --fusions flag ('a,b,...') as names of mmtx.fusion.FUSIONS; an
  unknown one stops the script, naming the known ones."""
  from mmtx.fusion import FUSIONS
  names = [f for f in text.split(",") if f]
  unknown = sorted(set(names) - set(FUSIONS))
  if unknown:
    raise SystemExit(f"{script}: unknown fusion(s) {unknown}; known: "
                     f"{sorted(FUSIONS)}")
  return names


def add_row(path: str, row: dict | None = None, **extra) -> dict:
  """Adds `row` (if any) to the rows stored in `path`, replacing one with
  the same `row_key`, and merges each `extra` dict into the file's entry of
  that name, under an exclusive lock, so processes running rows of one
  table side by side keep each other's rows; returns the stored rows."""
  import fcntl
  with open(path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    data = load_results(path)
    rows = {row_key(r): r for r in data.pop("rows", [])}
    if row is not None:
      rows[row_key(row)] = row
    for key, value in extra.items():
      data[key] = {**data.get(key, {}), **value}
    save_rows(path, rows.values(), **data)
  return rows


def add_committed_args(parser, example: str) -> None:
  """--resume_from and --table_only: a table measured over several sessions
  resumes from its committed rows (runs/ is not kept between machines)."""
  parser.add_argument(
      "--resume_from", default="",
      help=f"comma-separated results.json files (e.g. experiments/results/"
      f"{example}) whose rows (and other entries, such as speeds) count as "
      f"done; OUT's own win on the same key")
  parser.add_argument(
      "--table_only", action="store_true",
      help="train and time nothing: write the table and charts from the "
      "rows at hand (OUT/results.json and --resume_from)")


def merge_committed(sources: str, path: str, script: str) -> dict:
  """Adds to `path` the rows, and the entries of each other dict, of the
  comma-separated results.json files `sources` that `path` lacks (`path`'s
  own win); returns `path`'s rows. A missing source stops the script."""
  for src in [s for s in sources.split(",") if s]:
    if not os.path.exists(src):
      raise SystemExit(f"{script}: --resume_from {src} does not exist.")
    with open(src) as f:
      theirs = json.load(f)
    own = load_results(path)
    own_rows = {row_key(r) for r in own.get("rows", [])}
    for r in theirs.pop("rows", []):
      if row_key(r) not in own_rows:
        add_row(path, r)
    extra = {k: {n: v for n, v in entries.items()
                 if n not in own.get(k, {})}
             for k, entries in theirs.items() if isinstance(entries, dict)}
    if any(extra.values()):
      add_row(path, **extra)
  return load_rows(path)


def run_missing(done: dict, path: str, names, seeds, steps: int,
                run_one) -> list[dict]:
  """Runs `run_one(name, seed)` for every (name, seed) with no row in
  `done` (keyed by `row_key`), adding each row to `path` as it finishes
  (`add_row`); returns the rows of `names` at `steps`."""
  for seed in seeds:
    for n in names:
      if (n, seed, steps) in done:
        continue
      r = done[(n, seed, steps)] = run_one(n, seed)
      done.update(add_row(path, r))
      print(f"{n} seed {seed}: " + " ".join(
          f"{k.split('/')[-1]}={100 * v:.1f}" for k, v in r["metrics"].items()
          if v is not None), flush=True)
  return [r for r in done.values() if r["steps"] == steps
          and r["name"] in names]


def mean_std(values) -> tuple[float, float]:
  """Fractions -> (mean, sample std) in percent; std 0 for one value."""
  import numpy as np
  v = 100 * np.asarray(values, float)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def pct_cell(values) -> str:
  """A table cell for fractions over seeds: 'm%' for one value, 'm ± s%'
  (sample std) for several; '-' when there are none (Nones are dropped)."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  m, s = mean_std(values)
  return f"{m:.1f}" + (f" ± {s:.1f}" if len(values) > 1 else "") + "%"


def seed_series(results, names, keys, label=lambda name: name) -> list:
  """Rows over seeds -> `bar_chart` series: for each name (in the given
  order) `(label(name), means, stds)` over its rows' `metrics[key]` per key,
  in percent; Nones are dropped and a key with no value gives NaN (no bar)."""
  series = []
  for n in names:
    stats = []
    for k in keys:
      vals = [r["metrics"].get(k) for r in results if r["name"] == n]
      vals = [v for v in vals if v is not None]
      stats.append(mean_std(vals) if vals else (float("nan"), 0.0))
    series.append((label(n), [m for m, _ in stats], [s for _, s in stats]))
  return series


def markdown_table(header, rows) -> str:
  """A markdown table: `header` cells, then one line per row of cells."""
  line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
  return "\n".join([line(header), "|" + "---|" * len(header)]
                   + [line(r) for r in rows])


def bar_chart(path: str, categories, series, ylabel: str = "test accuracy (%)",
              title: str = "") -> str:
  """Writes a grouped bar chart to the PNG `path`: one group per category,
  one bar per series `(label, values, errors)` (errors None, or error-bar
  half-lengths such as the std over seeds; a NaN value draws no bar).
  Returns `path`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  series = list(series)
  x = np.arange(len(categories))
  width = 0.8 / max(len(series), 1)
  fig, ax = plt.subplots(figsize=(min(4 + 0.3 * len(series) * len(categories), 13),
                                  3.6))
  cmap = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
  for i, (label, values, errors) in enumerate(series):
    ax.bar(x + (i - (len(series) - 1) / 2) * width,
           np.asarray(values, float), width, label=label, color=cmap(i),
           yerr=None if errors is None else np.asarray(errors, float),
           capsize=2, error_kw={"elinewidth": 0.8})
  ax.set_xticks(x, list(categories))
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def machine(accelerator: bool = True) -> str:
  """'<CPU model>, N CPU cores' (the model from /proc/cpuinfo where there is
  one), plus, with `accelerator`, JAX's accelerator if it has one: the
  machine a table's numbers were measured on."""
  import platform
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  out = f"{model}, {os.cpu_count()} CPU cores"
  if not accelerator:
    return out
  try:
    import jax
    if jax.default_backend() != "cpu":
      out += f", {jax.device_count()} x {jax.devices()[0].device_kind}"
  except Exception:  # noqa: BLE001 - no JAX backend: the CPU is the machine
    pass
  return out


def add_common_args(parser, out: str) -> None:
  """--out, --cpu_devices and --quick, as every Sort-of-CLEVR script has."""
  parser.add_argument("--out", default=out)
  parser.add_argument("--cpu_devices", type=int, default=2,
                      help="XLA CPU devices on a CPU-only host (as "
                           "mesh.cpu_devices; applied to the first row only, "
                           "before JAX starts)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny data, few steps: checks the script runs")


def shrink_for_quick(cfg) -> None:
  """The --quick smoke run's data: sort_of_clevr/tiny, small batches."""
  with cfg.unlocked():
    cfg.data.name = "sort_of_clevr/tiny"
    cfg.batch_size = 8
    cfg.data.eval_batch_size = 16


def eval_history(workdir: str, keys) -> list[tuple[int, dict]]:
  """[(step, {key: value})] of every evaluation in WORKDIR/metrics.jsonl
  (keys without the 'eval/' prefix; a step evaluated twice, e.g. after a
  resume, keeps its last line)."""
  by_step = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    row = json.loads(line)
    vals = {k: row[f"eval/{k}"] for k in keys if f"eval/{k}" in row}
    if vals:
      by_step[row["step"]] = vals
  return sorted(by_step.items())
