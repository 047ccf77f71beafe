"""A TFDS `GeneratorBasedBuilder` base for mmtx's own builders (no TensorFlow).

TFDS locates a builder's source file through `importlib_resources`, which is
not a dependency of mmtx; the builders here point TFDS at their file directly.
"""
from __future__ import annotations

import inspect

from etils import epath
import tensorflow_datasets as tfds


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: array_record files, code path without importlib_resources."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
