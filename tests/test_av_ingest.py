"""Audio-visual clips through `python -m mmtx.data ingest`: WAV / FLAC
written by soundfile and MP4 (H.264 + AAC) written by PyAV from known
arrays, ingested, and checked against independent references: the tone's
frequency from an FFT, the resampled waveform against the analytic sine
and soxr, each sampled frame's colour within codec tolerance; bad files
skipped and counted per reason; the records read by the 'label' view."""
import csv
import io
import json
import tarfile

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
av = pytest.importorskip("av")

from mmtx import data  # noqa: E402
from mmtx.data import clips  # noqa: E402
from mmtx.data import ingest  # noqa: E402

FPS, N_FRAMES, W, H = 10, 20, 80, 48
# Frame i's centre square has colour COLORS[i % 5]; the strips outside it
# are white, so a frame that is not centre-cropped shows white.
COLORS = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 230],
                   [230, 220, 40], [200, 40, 200]], np.uint8)
SPEC = dict(frames=4, frame_stride=2, image_size=16, sample_rate=8000,
            audio_seconds=1.0)


def _frame(i):
  img = np.full((H, W, 3), 255, np.uint8)
  img[:, (W - H) // 2:(W + H) // 2] = COLORS[i % len(COLORS)]
  return img


def _mp4(tone_hz=None, audio_rate=16000, seconds=N_FRAMES / FPS) -> bytes:
  """H.264 frames `_frame(i)`, and an AAC tone of `tone_hz` (amplitude
  0.5) when given."""
  buf = io.BytesIO()
  with av.open(buf, mode="w", format="mp4") as out:
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    v.options = {"crf": "10"}
    a = None
    if tone_hz:
      a = out.add_stream("aac", rate=audio_rate)
      a.layout = "mono"
    for i in range(N_FRAMES):
      for p in v.encode(av.VideoFrame.from_ndarray(_frame(i), "rgb24")):
        out.mux(p)
    for p in v.encode():
      out.mux(p)
    if a is not None:
      n = int(seconds * audio_rate)
      wave = (0.5 * np.sin(2 * np.pi * tone_hz * np.arange(n) / audio_rate)
              ).astype(np.float32)
      for s in range(0, n, 1024):
        f = av.AudioFrame.from_ndarray(wave[None, s:s + 1024], format="fltp",
                                       layout="mono")
        f.sample_rate, f.pts = audio_rate, s
        for p in a.encode(f):
          out.mux(p)
      for p in a.encode():
        out.mux(p)
  return buf.getvalue()


def _tone(hz, rate, seconds=N_FRAMES / FPS, amp=(0.5, 0.3)):
  """Stereo sine [n, 2] of amplitudes `amp` (mono mix: their mean)."""
  t = np.arange(int(seconds * rate)) / rate
  return np.stack([a * np.sin(2 * np.pi * hz * t) for a in amp], 1)


def _peak_hz(wave, rate):
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)]


# sample_frames(20, 4, 2) centres the clip: frames 6, 8, 10, 12, spanning
# 0.6 s to 1.3 s; the 1 s window around 0.95 s starts at 0.45 s.
CLIP_FRAMES = (6, 8, 10, 12)
WINDOW_START = int(round(0.95 * 8000 - 4000))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("clips")
  (d / "a.mp4").write_bytes(_mp4())                 # video only
  (d / "b.mp4").write_bytes(_mp4(tone_hz=1000))     # with an AAC track
  sf.write(d / "a.wav", _tone(440, 22050), 22050, subtype="PCM_16")
  sf.write(d / "a.flac", _tone(300, 44100), 44100)
  (d / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
  (d / "bad.flac").write_bytes(b"fLaC" + b"\x01" * 100)
  rows = [("a.mp4", "a.wav", "dog"), ("b.mp4", "", "cat"),
          ("a.mp4", "a.flac", "dog"), ("a.mp4", "a.flac", "bird"),
          ("missing.mp4", "a.wav", "dog"), ("bad.mp4", "a.wav", "dog"),
          ("a.mp4", "missing.wav", "dog"),
          ("a.mp4", "bad.flac", "cat"), ("a.mp4", "", "cat"),
          ("b.mp4", "a.wav", "")]
  with open(d / "clips.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["video", "audio", "label"])
    w.writerows(rows)
  return d


@pytest.fixture(scope="module")
def ingested(files, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("data")
  summary = ingest.ingest("av_csv", str(files / "clips.csv"), "clips",
                          data_dir=str(data_dir), workers=0, verbose=False,
                          **SPEC)
  builder = ingest.open_builder("clips", str(data_dir))
  return summary, builder, data_dir


def test_resample_matches_the_analytic_sine_and_soxr():
  soxr = pytest.importorskip("soxr")
  for orig, target in [(44100, 16000), (8000, 22050), (48000, 44100)]:
    x = np.sin(2 * np.pi * 440 * np.arange(orig) / orig)
    y = clips.resample(x, orig, target)
    assert len(y) == target
    inner = slice(500, target - 500)   # away from either's edge handling
    ref = np.sin(2 * np.pi * 440 * np.arange(target) / target)
    np.testing.assert_allclose(y[inner], ref[inner], atol=1e-4)
    np.testing.assert_allclose(y[inner], soxr.resample(x, orig, target)[inner],
                               atol=1e-4)
    # A window of the output is the same samples, zeros before the input.
    part = clips.resample(x, orig, target, start=-50, num=300)
    np.testing.assert_array_equal(part[50:], y[:250])


def test_bad_files_are_skipped_and_counted_per_reason(ingested):
  summary, builder, _ = ingested
  assert summary["records"] == {"train": 3}
  assert summary["skipped"]["train"] == {
      "missing file": 2, "unreadable video": 1, "unreadable audio": 1,
      "no audio track": 1, "empty text": 1}
  assert builder.info.metadata["labels"] == ["bird", "cat", "dog"]
  assert builder.info.metadata["multi_label"] is True


def test_wav_and_flac_audio_is_resampled_and_windowed(ingested):
  _, builder, _ = ingested
  src = builder.as_data_source("train")
  recs = [src[i] for i in range(len(src))]
  n = np.arange(WINDOW_START, WINDOW_START + 8000) / 8000
  # a.wav: 440 Hz at 22.05 kHz, 16-bit, channels 0.5 and 0.3 -> mean 0.4.
  wav = recs[0]["audio"]
  assert wav.shape == (8000,) and wav.dtype == np.float32
  assert _peak_hz(wav, 8000) == pytest.approx(440, abs=1)
  np.testing.assert_allclose(wav, 0.4 * np.sin(2 * np.pi * 440 * n),
                             atol=2e-3)
  # a.flac: 300 Hz at 44.1 kHz; two rows (dog, bird) make one clip.
  flac = recs[2]["audio"]
  assert _peak_hz(flac, 8000) == pytest.approx(300, abs=1)
  np.testing.assert_allclose(flac, 0.4 * np.sin(2 * np.pi * 300 * n),
                             atol=2e-3)
  names = builder.info.metadata["labels"]
  assert [names[i] for i in recs[2]["label"]] == ["bird", "dog"]
  assert [names[i] for i in recs[0]["label"]] == ["dog"]


def test_mp4_frames_are_the_centred_clip_and_its_own_audio_track(ingested):
  _, builder, _ = ingested
  src = builder.as_data_source("train")
  for i in range(len(src)):
    video = src[i]["video"]
    assert video.shape == (4, 16, 16, 3) and video.dtype == np.uint8
    for frame, k in zip(video, CLIP_FRAMES):
      # H.264 at crf 10 in yuv420p: solid colours within a few levels; the
      # white strips are cropped away.
      err = np.abs(frame[2:-2, 2:-2].astype(int) - COLORS[k % 5]).max()
      assert err <= 12, (i, k, err)
  # b.mp4's AAC track: 1000 Hz, amplitude 0.5 (RMS 0.354) within 10%.
  track = src[1]["audio"]
  assert _peak_hz(track, 8000) == pytest.approx(1000, abs=1)
  assert np.sqrt(np.mean(track[1000:-1000] ** 2)) == pytest.approx(
      0.5 / np.sqrt(2), rel=0.1)


def test_webdataset_clips_decode_like_the_csv_ones(files, ingested, tmp_path):
  """The same files as tar members (KEY.mp4, KEY.wav, a label in KEY.json
  or KEY.cls) give the same arrays and labels as the CSV rows that name
  them as paths."""
  _, builder, _ = ingested
  tar_path = tmp_path / "clips-000.tar"
  with tarfile.open(tar_path, "w") as tar:
    for key, members in [("k0", {"mp4": "a.mp4", "wav": "a.wav"}),
                         ("k1", {"mp4": "b.mp4"})]:
      for ext, name in members.items():
        tar.add(files / name, arcname=f"{key}.{ext}")
      payload, ext = ((json.dumps({"label": "dog"}), "json") if key == "k0"
                      else ("cat", "cls"))
      info = tarfile.TarInfo(f"{key}.{ext}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload.encode()))
  summary = ingest.ingest("av_webdataset", str(tar_path), "wds",
                          data_dir=str(tmp_path), workers=0, verbose=False,
                          **SPEC)
  assert summary["records"] == {"train": 2}
  got = ingest.open_builder("wds", str(tmp_path)).as_data_source("train")
  want = builder.as_data_source("train")
  for i in range(2):
    np.testing.assert_array_equal(got[i]["video"], want[i]["video"])
    np.testing.assert_array_equal(got[i]["audio"], want[i]["audio"])
  meta = ingest.open_builder("wds", str(tmp_path)).info.metadata
  assert meta["labels"] == ["cat", "dog"] and meta["multi_label"] is False
  assert [int(got[i]["label"][0]) for i in range(2)] == [1, 0]


def test_label_view_reads_the_ingested_clips(ingested):
  _, builder, data_dir = ingested
  it, info = data.get_dataset("clips", "train", "label", batch_size=3,
                              data_dir=str(data_dir), shuffle=False)
  batch = next(it)
  src = builder.as_data_source("train")
  assert info.image_shape == (4, 16, 16, 3)
  for row, i in enumerate(batch["index"]):
    rec = src[int(i)]
    np.testing.assert_array_equal(
        batch["video"][row], rec["video"].astype(np.float32) / 127.5 - 1)
    np.testing.assert_array_equal(batch["audio"][row], rec["audio"])
    want = np.zeros(3, np.float32)
    want[rec["label"]] = 1
    np.testing.assert_array_equal(batch["labels"][row], want)
  with pytest.raises(ValueError, match="holds clips of 16x16 frames"):
    data.get_dataset("clips", "train", "label", batch_size=4,
                     data_dir=str(data_dir), image_size=32)


def test_a_clip_source_wrong_as_a_whole_is_one_error(files, tmp_path):
  (tmp_path / "x.csv").write_text("audio,label\na.wav,dog\n")
  with pytest.raises(ingest.sources.SourceError, match="no video column"):
    ingest.ingest("av_csv", str(tmp_path / "x.csv"), "x",
                  data_dir=str(tmp_path), workers=0, verbose=False)
  (tmp_path / "y.csv").write_text("video,audio\na.mp4,a.wav\n")
  with pytest.raises(ingest.sources.SourceError, match="no label column"):
    ingest.ingest("av_csv", str(tmp_path / "y.csv"), "y",
                  data_dir=str(tmp_path), workers=0, verbose=False)
  with pytest.raises(ingest.sources.SourceError, match="frames must be"):
    ingest.ingest("av_csv", str(files / "clips.csv"), "z",
                  data_dir=str(tmp_path), workers=0, verbose=False, frames=0)


@pytest.mark.slow
def test_av_event_trains_on_ingested_single_label_clips(files, tmp_path):
  """configs/av_event.py on an ingested single-label dataset: softmax
  cross-entropy, and top-1 accuracy over every clip."""
  from mmtx import tasks
  from mmtx import train
  from mmtx.configs import av_event
  rows = [(f"{v}.mp4", "a.wav" if v == "a" else "", v) for v in "abab"]
  with open(tmp_path / "clips.csv", "w", newline="") as f:
    csv.writer(f).writerows([("video", "audio", "label")] + rows)
  ingest.ingest("av_csv", str(tmp_path / "clips.csv"), "single",
                data_dir=str(tmp_path), images=str(files), workers=0,
                verbose=False, **SPEC)
  cfg = av_event.get_config("steps=2,width=16,fusion=concat")
  cfg.data.name, cfg.data.data_dir = "single", str(tmp_path)
  cfg.data.eval_splits = ("train",)
  cfg.batch_size = cfg.data.eval_batch_size = 2
  cfg.model.video.patch_size = (2, 8, 8)
  task = tasks.build_task(cfg)
  out = train.train_and_evaluate(cfg, str(tmp_path / "run"), task,
                                 progress=False)
  assert task.multi_label is False and "mAP" not in out
  assert out["accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)
