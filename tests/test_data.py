"""Data sources and the deterministic loader."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from diffusion.data import DigitsSource, digits_split_indices, ImageFolderSource, Loader, TfdsSource, resize_and_crop


class ArraySource:
  def __init__(self, n, size=4):
    self.images = np.arange(n * size * size, dtype=np.uint8).reshape(n, size, size, 1)
    self.num_classes = 0

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"x": self.images[i], "label": int(i)}


def test_the_stream_is_a_function_of_seed_and_position():
  source = ArraySource(10)
  loader = Loader(source, 4, seed=3, random_flip=False, prefetch=3)
  stream = loader.batches()
  labels = np.concatenate([next(stream)["label"] for _ in range(5)])  # 2 epochs
  # Each epoch is a permutation of the data.
  assert sorted(labels[:10]) == list(range(10)) and sorted(labels[10:20]) == list(range(10))
  assert list(labels[:10]) != list(labels[10:20])
  # Starting at a position continues the same stream; another seed gives another.
  again = Loader(source, 4, seed=3, random_flip=False).batches(start=8)
  np.testing.assert_array_equal(next(again)["label"], labels[8:12])
  other = Loader(source, 4, seed=4, random_flip=False).batches()
  assert list(next(other)["label"]) != list(labels[:4])
  loader.close()


def test_processes_read_their_rows_of_the_global_batch():
  source = ArraySource(13)
  whole = Loader(source, 6, seed=0, random_flip=True).batches(start=5)
  parts = [Loader(source, 6, seed=0, random_flip=True, process_index=p, process_count=3)
           .batches(start=5) for p in range(3)]
  for _ in range(4):
    batch = next(whole)
    pieces = [next(p) for p in parts]
    for key in ("x", "label"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), batch[key])
  with pytest.raises(ValueError, match="batch_size 6 must be divisible by the number of processes 4"):
    Loader(source, 6, seed=0, random_flip=False, process_count=4)


def test_random_flips_mirror_about_half_the_images():
  source = ArraySource(200)
  batch = next(Loader(source, 200, seed=0, random_flip=True).batches())
  originals = source.images[batch["label"]]
  flipped = np.array([not np.array_equal(a, b) for a, b in zip(batch["x"], originals)])
  np.testing.assert_array_equal(batch["x"][flipped], originals[flipped][:, :, ::-1])
  assert 70 < flipped.sum() < 130


def test_digits():
  source = DigitsSource(split="all")
  assert len(source) == 1797 and source.num_classes == 10
  image, label = source[0]["x"], source[0]["label"]
  assert image.shape == (8, 8, 1) and image.dtype == np.uint8 and label == 0
  train, test = DigitsSource(split="train"), DigitsSource(split="test")
  assert len(train) == 1500 and len(test) == 297
  train_index, test_index = digits_split_indices("train"), digits_split_indices("test")
  np.testing.assert_array_equal(np.sort(np.concatenate([train_index, test_index])), np.arange(1797))
  np.testing.assert_array_equal(test.images, source.images[test_index])
  assert np.bincount(test.labels).min() > 15  # every class is held out
  with pytest.raises(ValueError, match="config.data.split"):
    DigitsSource(split="validation")
  # The 17 grey levels 0..16 land on 0..255.
  assert source.images.max() == 255 and len(np.unique(source.images)) == 17
  big = DigitsSource(image_size=16, channels=3)
  assert big[5]["x"].shape == (16, 16, 3)


def write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def test_image_folder(tmp_path):
  rng = np.random.default_rng(0)
  write(str(tmp_path / "cats" / "a.png"), rng.integers(0, 255, (40, 60, 3), np.uint8))
  write(str(tmp_path / "cats" / "b.jpg"), rng.integers(0, 255, (64, 64, 3), np.uint8))
  write(str(tmp_path / "dogs" / "c.jpeg"), rng.integers(0, 255, (30, 20), np.uint8))
  (tmp_path / "notes.txt").write_text("not an image")
  source = ImageFolderSource(str(tmp_path), image_size=16, channels=3)
  assert len(source) == 3 and source.class_names == ["cats", "dogs"]
  for i, label in enumerate([0, 0, 1]):
    image, got = source[i]["x"], source[i]["label"]
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and got == label
  grey = ImageFolderSource(str(tmp_path), image_size=8, channels=1)
  assert grey[0]["x"].shape == (8, 8, 1)
  # An image beside the class folders would be taken for the first class: refused.
  write(str(tmp_path / "stray.png"), rng.integers(0, 255, (16, 16, 3), np.uint8))
  with pytest.raises(ValueError, match=r"holds images directly under it \(e.g. 'stray.png'\) "
                                       r"beside class folders \(e.g. 'cats/'\)"):
    ImageFolderSource(str(tmp_path), image_size=16, channels=3)


def test_every_reader_scales_16_bit_and_expands_palettes(tmp_path):
  """Training's folder reader (and so prepare-data), evaluate's and the applications' read a
  grey 16-bit PNG at 32768 / 65535 as 128 (PIL's convert("L") clipped it to 255, a uint8 cast
  wrapped it to 0), bilevel and palette images as their grey levels and colours, and refuse
  float pixels naming the file."""
  from diffusion.applications.imageio import read_image
  from diffusion.evaluation.measures import load_image_set
  folder = tmp_path / "images"
  folder.mkdir()
  Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(folder / "a16.png")
  assert Image.open(folder / "a16.png").mode == "I;16"
  Image.fromarray(np.full((8, 8), 255, np.uint8)).convert("1").save(folder / "b1.png")
  grey = ImageFolderSource(str(folder), image_size=8, channels=1)
  assert [int(grey[i]["x"].max()) for i in range(2)] == [128, 255]
  assert ImageFolderSource(str(folder), image_size=8, channels=3)[0]["x"].max() == 128
  assert np.all(read_image(folder / "a16.png", (8, 8, 1)) == 128)
  assert np.all(load_image_set(str(folder), "--samples")[..., 0] == [[[128]], [[255]]])
  palette = tmp_path / "palette"
  palette.mkdir()
  Image.fromarray(np.full((8, 8, 3), (204, 51, 102), np.uint8)).convert("P").save(palette / "p.png")
  assert Image.open(palette / "p.png").mode == "P"
  assert tuple(ImageFolderSource(str(palette), 8, 3)[0]["x"][0, 0]) == (204, 51, 102)
  assert tuple(read_image(palette / "p.png", (8, 8, 3))[0, 0]) == (204, 51, 102)
  floats = tmp_path / "floats"
  floats.mkdir()
  Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(floats / "f.png", format="TIFF")
  with pytest.raises(ValueError, match=r"broken image file .*f.png: .*floats \(PIL mode F\)"):
    ImageFolderSource(str(floats), 8, 1)[0]
  with pytest.raises(ValueError, match=r"`image` .*f.png' is not a readable image: .*floats"):
    read_image(floats / "f.png", (8, 8, 1))


def test_image_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.path .* is not a folder"):
    ImageFolderSource(str(tmp_path / "missing"), 8, 3)
  with pytest.raises(ValueError, match="holds no .png/.jpg/.jpeg images"):
    ImageFolderSource(str(tmp_path), 8, 3)


def broken_folder(tmp_path, n=12, broken=(5,)):
  """n 8x8 PNGs named 00..n-1 of distinct grey levels, the `broken` ones damaged."""
  for i in range(n):
    write(str(tmp_path / f"{i:02d}.png"), np.full((8, 8, 3), 10 * i, np.uint8))
  for i in broken:
    (tmp_path / f"{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  return ImageFolderSource(str(tmp_path), 8, 3)


def test_a_broken_image_is_named_when_reached_and_skipped_or_fatal(tmp_path, caplog):
  source = broken_folder(tmp_path)  # built from the listing: the broken file is not opened
  assert len(source) == 12 and source[4]["x"][0, 0, 0] == 40
  with pytest.raises(ValueError, match=r"broken image file .*05.png"):
    source[5]
  with pytest.raises(ValueError, match=r"broken image file .*05.png"):
    for _ in Loader(source, 4, seed=0).batches():
      pass
  loader = Loader(source, 4, seed=0, on_error="skip")
  stream = loader.batches()
  levels = np.concatenate([next(stream)["x"][:, 0, 0, 0] for _ in range(3)]) // 10
  # The broken one's place goes to the next example of the epoch's order, once reported.
  order = np.random.default_rng([0, 0]).permutation(12)
  at = list(order).index(5)
  assert loader.skipped == 1 and "05.png" in caplog.text
  assert list(levels) == [*order[:at], order[at + 1], *order[at + 1:]]
  with pytest.raises(ValueError, match="config.data.on_error must be one of"):
    Loader(source, 4, seed=0, on_error="ignore")


def test_worker_processes_give_the_stream_of_threads_from_any_position(tmp_path):
  for i in range(24):
    write(str(tmp_path / f"{i:02d}.png"), np.full((8, 8, 3), 10 * i, np.uint8))
  source = ImageFolderSource(str(tmp_path), 8, 3)
  threads = Loader(source, 6, seed=1, random_flip=True).batches(start=18)
  workers = Loader(source, 6, seed=1, random_flip=True, num_workers=2).batches(start=18)
  for _ in range(5):  # across the epoch's end (24 examples)
    a, b = next(threads), next(workers)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # The workers are other processes: they read the examples, this process does not.
  readers = next(Loader(Pids(), 4, seed=0, num_workers=2).batches())["label"]
  assert os.getpid() not in readers


class Pids:
  """Examples whose label is the id of the process that read them."""
  num_classes = 0

  def __len__(self):
    return 8

  def __getitem__(self, index):
    return {"x": np.zeros((2,), np.float32), "label": os.getpid()}


def test_resize_and_crop_keeps_the_center():
  image = np.zeros((20, 40, 1), np.uint8)
  image[:, 10:30] = 255  # the central square is white
  out = resize_and_crop(image, 10)
  assert out.shape == (10, 10, 1) and out.min() > 200


def test_tfds_data_source_with_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    source = TfdsSource("cifar10", "train", image_size=16, channels=3)
    assert len(source) == 12 and source.num_classes == 10
    image, label = source[3]["x"], source[3]["label"]
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and 0 <= label < 10
    np.testing.assert_array_equal(source[3]["x"], image)
    with pytest.raises(ValueError, match="config.data.name 'no_such_set': TFDS knows no such dataset"):
      TfdsSource("no_such_set", "train", 8, 3)


def test_tfds_source_of_a_non_image_feature():
  """A TFDS feature that is not an image (coordinates of 16 points, float32) feeds a point-set
  run as it is: no resizing, its dtype, its labels; batched by the loader. A config shape it
  does not have is named at the first example."""
  import ml_collections
  from tfds_fixtures import points  # registers points_for_test
  from diffusion.data import make_source
  from diffusion.data.loader import check_example
  from diffusion.dataspec import from_data_config
  del points
  data = ml_collections.ConfigDict(dict(name="points_for_test", split="train", feature="coords",
                                        shape=(16, 3), kind="points"))
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    source = make_source(data)
    assert len(source) == 6 and source.num_classes == 2
    example = source[2]
    assert example["x"].shape == (16, 3) and example["x"].dtype == np.float32
    assert example["label"] in (0, 1) and np.ptp(example["x"]) > 0  # mock data, not zeros
    spec = from_data_config(data)
    batch = next(Loader(source, 4, seed=0, spec=spec).batches())
    assert batch["x"].shape == (4, 16, 3) and batch["label"].shape == (4,)
    examples = [source[i]["x"] for i in range(6)]
    assert all(any(np.array_equal(x, e) for e in examples) for x in batch["x"])
    data.shape = (8, 3)
    with pytest.raises(ValueError, match=r"source\[0\]\['x'\] has shape \(16, 3\); config.data.shape "
                                         r"is \(8, 3\)"):
      check_example(source[0], 0, from_data_config(data))
    data.feature = "pos"
    with pytest.raises(ValueError, match="dataset 'points_for_test' has no feature 'pos'"):
      make_source(data)


def test_tfds_dataset_not_prepared(tmp_path):
  with pytest.raises(FileNotFoundError, match="'mnist' is not prepared as ArrayRecord under data_dir"):
    TfdsSource("mnist", "train", 8, 1, data_dir=str(tmp_path))
