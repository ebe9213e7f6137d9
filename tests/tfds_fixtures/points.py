"""`points_for_test`: a TFDS dataset of 16 points in 3-D (float32 "coords") with a binary label;
importing this module registers it. Its examples come from `tfds.testing.mock_data`."""

import numpy as np
import tensorflow_datasets as tfds


class PointsForTest(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "coords": tfds.features.Tensor(shape=(16, 3), dtype=np.float32),
        "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(4):
      yield i, {"coords": np.zeros((16, 3), np.float32), "label": i % 2}
