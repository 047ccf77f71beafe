"""Image input throughput: ingest, then decode + augment, against the loader
a user would otherwise pick, on the same generated files in the same run.

  python experiments/benchmarks/input_pipeline.py --images [--pairs 20000]
  python experiments/benchmarks/image_input.py --pairs 20000 --workers 2

Generates `--pairs` JPEGs (256-512 px a side, photo-like: smooth colour
fields plus noise, quality 90) with captions as webdataset tar shards, then:
  1. ingest: `python -m mmtx.data ingest webdataset` with `--workers`
     processes; pairs/s per worker and the peak memory of the process tree
     (resident set summed over the main process and its workers), at a
     quarter of the pairs and at all of them (flat memory: about equal);
  2. mmtx: `get_dataset(..., 'contrastive', augment=True)` on the ingested
     dataset: decode, random resized crop to 224, normalise, in one process
     with one reading thread (= one core), and with `--workers` grain
     worker processes;
  3. peer: open_clip's training loader (`peer_loader`: the `webdataset`
     package's pipeline + PIL + torchvision RandomResizedCrop / ToTensor /
     Normalize + open_clip.tokenize), in the main process and with
     `--workers` WebLoader workers.
Prints images/s, images/s per core and mmtx / peer. Both decode, crop and
normalise the image and tokenize the caption.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import numpy as np


def write_shards(root: str, pairs: int, per_shard: int = 1000, seed: int = 0):
  """`pairs` JPEG + caption pairs as shards root/pairs-NNNNN.tar; returns
  the brace pattern."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  shards = -(-pairs // per_shard)
  for s in range(shards):
    with tarfile.open(os.path.join(root, f"pairs-{s:05d}.tar"), "w") as t:
      for i in range(s * per_shard, min(pairs, (s + 1) * per_shard)):
        w, h = (int(v) for v in rng.integers(256, 513, 2))
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        noisy = np.asarray(img, np.int16) + rng.integers(-12, 13, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=90)
        caption = f"photo {i} of a {('red', 'green', 'blue')[i % 3]} scene"
        for name, payload in ((f"{i:08d}.jpg", buf.getvalue()),
                              (f"{i:08d}.txt", caption.encode())):
          info = tarfile.TarInfo(name)
          info.size = len(payload)
          t.addfile(info, io.BytesIO(payload))
  return os.path.join(root, f"pairs-{{00000..{shards - 1:05d}}}.tar")


def _tree_rss(pid: int) -> int:
  """Resident bytes of `pid` and its descendants (Linux /proc)."""
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    try:
      with open(f"/proc/{p}/statm") as f:
        total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
      for task in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{task}/children") as f:
          todo += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
      continue
  return total


def time_ingest(pattern, name, data_dir, workers):
  """(seconds, peak tree RSS bytes, records) of one CLI ingest run."""
  cmd = [sys.executable, "-m", "mmtx.data", "ingest", "webdataset", pattern,
         "--name", name, "--data_dir", data_dir, "--workers", str(workers),
         "--overwrite"]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  peak = [0]

  def sample():
    while proc.poll() is None:
      peak[0] = max(peak[0], _tree_rss(proc.pid))
      time.sleep(0.1)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  out, err = proc.communicate()
  secs = time.perf_counter() - start
  sampler.join()
  if proc.returncode:
    raise RuntimeError(f"ingest failed:\n{err[-2000:]}")
  records = int(out.split("train: ")[-1].split(" records")[0].replace(",", ""))
  return secs, peak[0], records


def _tree_cpu(pid: int) -> float:
  """CPU seconds (user + system) of `pid` and its live descendants."""
  total, todo = 0.0, [pid]
  tick = os.sysconf("SC_CLK_TCK")
  while todo:
    p = todo.pop()
    try:
      with open(f"/proc/{p}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / tick
      for task in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{task}/children") as f:
          todo += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
      continue
  return total


def _time(it, batches, batch_size):
  """(images/s, images per CPU second of this process tree) over `batches`
  batches of a started iterator."""
  next(it)   # starts the workers, opens the files
  cpu, start = _tree_cpu(os.getpid()), time.perf_counter()
  for _ in range(batches):
    next(it)
  secs = time.perf_counter() - start
  cpu = _tree_cpu(os.getpid()) - cpu
  return batches * batch_size / secs, batches * batch_size / max(cpu, 1e-9)


def time_mmtx(name, data_dir, batches, batch_size, workers):
  from mmtx import data  # pylint: disable=g-import-not-at-top
  it, _ = data.get_dataset(name, "train", "contrastive", batch_size=batch_size,
                           seed=0, augment=True, image_size=224,
                           data_dir=data_dir, shard=(0, 1),
                           num_threads=1, num_workers=workers, cache_mb=0,
                           prefetch=2)
  rates = _time(it, batches, batch_size)
  if hasattr(it, "close"):
    it.close()
  return rates


def time_peer(pattern, batches, batch_size, workers):
  import torch  # pylint: disable=g-import-not-at-top
  from mmtx.data import ingest_sources  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  loader = peer_loader(ingest_sources.expand_braces(pattern), batch_size,
                       workers)
  it = iter(loader)
  rates = _time(it, batches, batch_size)
  del it
  return rates


def peer_loader(urls, batch_size, workers):
  """open_clip's training loader for webdataset shards, built from the
  `webdataset` package as its `get_wds_dataset` builds it (resampled shards,
  a sample shuffle buffer before decode, PIL decode, RandomResizedCrop with
  bicubic resampling, CLIP normalisation, the caption tokenized by
  `open_clip.tokenize`) and batched inside the workers of a `WebLoader`."""
  import open_clip  # pylint: disable=g-import-not-at-top
  import webdataset as wds  # pylint: disable=g-import-not-at-top
  from torchvision import transforms  # pylint: disable=g-import-not-at-top
  image = transforms.Compose([
      transforms.RandomResizedCrop(
          224, scale=(0.35, 1.0),
          interpolation=transforms.InterpolationMode.BICUBIC),
      transforms.ToTensor(),
      transforms.Normalize((0.48145466, 0.4578275, 0.40821073),
                           (0.26862954, 0.26130258, 0.27577711))])
  pipeline = wds.DataPipeline(
      wds.ResampledShards(urls), wds.tarfile_to_samples(),
      wds.shuffle(5000, initial=1000), wds.decode("pilrgb"),
      wds.rename(image="jpg;png;jpeg;webp", text="txt"),
      wds.map_dict(image=image, text=lambda t: open_clip.tokenize([t])[0]),
      wds.to_tuple("image", "text"), wds.batched(batch_size))
  return wds.WebLoader(pipeline, batch_size=None, shuffle=False,
                       num_workers=workers)


def run(args):
  root = args.out or tempfile.mkdtemp(prefix="mmtx_image_bench_")
  src = os.path.join(root, "src")
  os.makedirs(src, exist_ok=True)
  start = time.perf_counter()
  pattern = _shards(src, args.pairs, args.per_shard, 0)
  print(f"{args.pairs:,} JPEG pairs (256-512 px) ready in "
        f"{time.perf_counter() - start:.0f} s under {src}")
  quarter = _shards(os.path.join(root, "quarter"), max(1, args.pairs // 4),
                    args.per_shard, 1)
  ddir = os.path.join(root, "data")
  q_secs, q_peak, _ = time_ingest(quarter, "bench_q", ddir, args.workers)
  secs, peak, records = time_ingest(pattern, "bench", ddir, args.workers)
  w = max(args.workers, 1)
  print(f"\ningest, {args.workers} worker(s): {records:,} pairs in {secs:.1f} s"
        f" = {records / secs:,.0f} pairs/s = {records / secs / w:,.0f} pairs/s"
        f" per worker; peak memory {peak / 2**20:,.0f} MiB "
        f"({q_peak / 2**20:,.0f} MiB for a quarter of the pairs)")
  rows = []
  for workers in (0, args.workers):
    mm, peer = [], []
    for r in range(args.rounds):   # interleaved: load changes hit both
      for who in ((0, 1) if r % 2 == 0 else (1, 0)):
        if who == 0:
          mm.append(time_mmtx("bench", ddir, args.batches, args.batch_size,
                              workers))
        else:
          peer.append(time_peer(pattern, args.batches, args.batch_size,
                                workers))
    mm, peer = np.median(mm, 0), np.median(peer, 0)
    rows.append((workers, mm, peer))
  print("\n| loader | mmtx img/s | peer img/s | mmtx img/CPU-s | "
        "peer img/CPU-s | mmtx / peer per core |")
  print("|---|---|---|---|---|---|")
  for workers, mm, peer in rows:
    label = "main process" if workers == 0 else f"{workers} worker(s)"
    print(f"| {label} | {mm[0]:,.0f} | {peer[0]:,.0f} | {mm[1]:,.0f} | "
          f"{peer[1]:,.0f} | {mm[1] / peer[1]:.2f} |")
  print(f"\n(224 px random resized crops, batch {args.batch_size}, median "
        f"of {args.rounds} interleaved rounds of {args.batches} batches; "
        f"img/CPU-s = images per CPU second of the whole process tree; "
        f"{os.cpu_count()} CPU cores)")
  return rows


def _shards(directory, pairs, per_shard, seed):
  """write_shards, or the shards an earlier run left in `directory`."""
  os.makedirs(directory, exist_ok=True)
  shards = -(-pairs // per_shard)
  pattern = os.path.join(directory, f"pairs-{{00000..{shards - 1:05d}}}.tar")
  stamp = os.path.join(directory, f"done-{pairs}-{per_shard}-{seed}")
  if not os.path.exists(stamp):
    write_shards(directory, pairs, per_shard, seed)
    open(stamp, "w").close()
  return pattern


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--pairs", type=int, default=20000)
  p.add_argument("--per_shard", type=int, default=1000)
  p.add_argument("--workers", type=int,
                 default=max(1, (os.cpu_count() or 2) - 1))
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default="", help="keep the files here (and reuse "
                 "them on the next run)")
  run(p.parse_args(argv))


if __name__ == "__main__":
  main()
