"""Datasets (TFDS builders, no TensorFlow needed), tokenizers and the grain
input pipeline. Entry points: `get_dataset`, `to_device`, `batch_sharding`,
`ensure_built`; batch keys are listed in `mmtx.data.views`."""
from mmtx.data.build import default_data_dir, ensure_built
from mmtx.data.catalog import CATALOG_FIELDS, Fields
from mmtx.data.pipeline import DataInfo, batch_sharding, get_dataset, to_device
from mmtx.data.tokenizers import (BOS, EOS, MASK, PAD, SEP, UNK,
                                  SentencePieceTokenizer, Tokenizer,
                                  WordTokenizer, load_tokenizer)
from mmtx.data.views import VIEWS, as_text

__all__ = [
    "default_data_dir", "ensure_built", "CATALOG_FIELDS", "Fields", "DataInfo",
    "batch_sharding", "get_dataset", "to_device", "BOS", "EOS", "MASK", "PAD",
    "SEP", "UNK", "SentencePieceTokenizer", "Tokenizer", "WordTokenizer",
    "load_tokenizer", "VIEWS", "as_text",
]
