"""Audio-visual question answering: VQA's loss and per-type evaluation over
clips ('video' [B, T, H, W, 3], 'audio' [B, samples]) read by
`AudioVisualModel`; the data are AV-Scenes-style records (mmtx.data views,
'vqa' on records with 'video' and 'audio')."""
from __future__ import annotations

import numpy as np

from mmtx.tasks import common
from mmtx.tasks.vqa import VqaTask


class AvqaTask(VqaTask):

  def build_model(self):
    from mmtx.models.av_model import AudioVisualModel
    cfg = common.model_config(self.config,
                              vocab_size=self.info.tokenizer.vocab_size,
                              num_answers=len(self.info.answers))
    return AudioVisualModel(cfg)

  def inputs(self, batch):
    return batch["video"], batch["audio"], batch["question"]

  def init_batch(self):
    info, b = self.info, self.config.batch_size
    return {"video": np.zeros((b,) + tuple(info.image_shape), np.float32),
            "audio": np.zeros((b, info.metadata["audio_samples"]), np.float32),
            "question": np.ones((b, self.config.data.max_len), np.int32)}

  def init_variables(self, rng, batch):
    return self.model.init(rng, *self.inputs(batch))


TASK = AvqaTask
