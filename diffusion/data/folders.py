"""Image folders as random-access sources, indexed from their listing alone.

A folder's index is its listing: every image's path relative to the folder,
size and modification time, and the classes its first-level subfolders name.
Building it opens no image (on a network file system or an object store,
opening 1.28M files costs hours; listing them costs minutes), and neither does
a start or a resume: an image is opened when the loader first needs it, and a
broken one is reported then, by path (`config.data.on_error` says whether the
run stops or skips it). A run keeps its folder's index in its workdir
(`FolderIndex.save`); a resumed run compares the listing with it and refuses
to go on over a folder that changed (files added, removed or edited), since
that would silently change the data stream it resumes.
"""

import dataclasses
import os

import numpy as np
from etils import epath

from diffusion import paths
from diffusion.images import IMAGE_EXTENSIONS, image_array, open_image


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """The images under a folder: relative paths (sorted), sizes in bytes and modification
  times (seconds; -1 where the storage does not say)."""
  relative: tuple[str, ...]
  sizes: np.ndarray   # int64 [N]
  mtimes: np.ndarray  # float64 [N]

  @classmethod
  def of(cls, root: epath.Path) -> "FolderIndex":
    """The listing of `root`: os.walk and stat on a local disk (no file is opened); on an
    object store its listing and each object's metadata."""
    found = []
    if not paths.is_remote(root):
      base = os.fspath(root)
      for folder, dirs, files in os.walk(base):
        dirs.sort()
        for name in files:
          if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            full = os.path.join(folder, name)
            stat = os.stat(full)
            found.append((os.path.relpath(full, base), stat.st_size, stat.st_mtime))
    else:
      for file in paths.files_under(root):
        if file.suffix.lower() in IMAGE_EXTENSIONS:
          stat = file.stat()
          found.append((os.fspath(file)[len(os.fspath(root)):].lstrip("/"),
                        getattr(stat, "length", -1), getattr(stat, "mtime", -1)))
    found.sort()
    return cls(tuple(f[0] for f in found), np.asarray([f[1] for f in found], np.int64),
               np.asarray([f[2] for f in found], np.float64))

  def __len__(self) -> int:
    return len(self.relative)

  def save(self, path: epath.Path) -> None:
    """Writes the index as a compressed .npz (local or object store)."""
    import io
    buffer = io.BytesIO()
    np.savez_compressed(buffer, relative=np.asarray(self.relative, dtype=str), sizes=self.sizes,
                        mtimes=self.mtimes)
    paths.write_bytes(path, buffer.getvalue())

  @classmethod
  def load(cls, path: epath.Path) -> "FolderIndex":
    import io
    with np.load(io.BytesIO(path.read_bytes())) as saved:
      return cls(tuple(str(r) for r in saved["relative"]), saved["sizes"], saved["mtimes"])

  def changes(self, new: "FolderIndex") -> str:
    """What differs from `self` to `new`, in a few words ("" if nothing): files added,
    removed, and edited (another size or modification time), with an example of each."""
    old_files = dict(zip(self.relative, zip(self.sizes.tolist(), self.mtimes.tolist())))
    new_files = dict(zip(new.relative, zip(new.sizes.tolist(), new.mtimes.tolist())))
    added = sorted(set(new_files) - set(old_files))
    removed = sorted(set(old_files) - set(new_files))
    edited = sorted(f for f in set(old_files) & set(new_files) if old_files[f] != new_files[f])
    parts = [f"{len(names)} {what} (e.g. {names[0]})"
             for names, what in ((added, "added"), (removed, "removed"), (edited, "edited"))
             if names]
    return ", ".join(parts)


class ImageFolderSource:
  """PNG/JPEG files under `path` (a local folder or an object-store URI; sorted, recursively);
  a first-level subfolder names the class.

  Either every image lies in a class folder (labels: the folders in sorted
  order) or none does (unlabelled data, label 0); a mix is refused. Built from
  the folder's listing (`FolderIndex`): no image is opened before it is read,
  and reading a broken one raises a ValueError that names its path.
  """

  def __init__(self, path: str, image_size: int, channels: int):
    root = paths.resolve(path, "config.data.path")
    if not root.is_dir():
      raise FileNotFoundError(f"config.data.path {path!r} is not a folder")
    self.index = FolderIndex.of(root)
    relative = list(self.index.relative)
    if not relative:
      raise ValueError(f"config.data.path {path!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    loose = [r for r in relative if "/" not in r]
    classes = sorted({r.split("/")[0] for r in relative if "/" in r})
    if loose and classes:
      raise ValueError(
          f"config.data.path {path!r} holds images directly under it (e.g. {loose[0]!r}) beside "
          f"class folders (e.g. {classes[0] + '/'!r}): move them into a class folder, or "
          "keep only loose images for unlabelled data")
    self.class_names = classes
    self.num_classes = len(classes)
    index = {name: i for i, name in enumerate(classes)}
    self.labels = [index[r.split("/")[0]] if classes else 0 for r in relative]
    self.root, self.relative = root, relative
    self.image_size, self.channels = image_size, channels

  @property
  def files(self) -> list[epath.Path]:
    return [self.root / r for r in self.relative]

  def __len__(self) -> int:
    return len(self.relative)

  def read(self, index: int) -> np.ndarray:
    """The image `index` as uint8 [size, size, channels]; a ValueError naming the file if it
    cannot be decoded."""
    file = self.root / self.relative[index]
    try:
      return image_array(open_image(file), self.channels, self.image_size)
    except Exception as e:  # PIL and the storage raise many types for a broken file
      raise ValueError(f"broken image file {os.fspath(file)}: {paths.first_line(e)}") from None

  def __getitem__(self, index: int) -> dict:
    return {"x": self.read(index), "label": self.labels[index]}


class PairedFolderSource:
  """(target, 0, input) pairs from `path/input/` and `path/target/` files of the same names.

  For image-to-image training: the model learns the target given the input.
  """

  def __init__(self, path: str, image_size: int, channels: int):
    root = paths.resolve(path, "config.data.path")
    inputs = ImageFolderSource(os.fspath(root / "input"), image_size, channels)
    targets = ImageFolderSource(os.fspath(root / "target"), image_size, channels)
    mine, theirs = inputs.relative, targets.relative
    if mine != theirs:
      missing = sorted(set(mine) ^ set(theirs))[:3]
      raise ValueError(f"config.data.path {path!r}: input/ and target/ must hold the same file "
                       f"names; unpaired: {missing}")
    self.inputs, self.targets, self.num_classes = inputs, targets, 0

  def __len__(self) -> int:
    return len(self.targets)

  def __getitem__(self, index: int) -> dict:
    return {"x": self.targets[index]["x"], "label": 0, "cond": self.inputs[index]["x"]}


def folder_indexes(source) -> dict[str, FolderIndex]:
  """The folder indexes a source reads through ({"": ...} for an image folder, {"input",
  "target"} for pairs, those of the source under a degraded one), else {}."""
  if isinstance(source, ImageFolderSource):
    return {"": source.index}
  if isinstance(source, PairedFolderSource):
    return {"input": source.inputs.index, "target": source.targets.index}
  inner = getattr(source, "source", None)
  return folder_indexes(inner) if inner is not None and inner is not source else {}


def check_indexes(source, folder: epath.Path, *, resuming: bool, write: bool) -> None:
  """Keeps `source`'s folder indexes in `folder` (a run's workdir/data_index/). When
  `resuming`, a folder whose listing differs from the saved index is refused with a one-line
  ValueError that says what changed; otherwise the index is (re)written when `write`."""
  for name, index in folder_indexes(source).items():
    path = folder / f"{name or 'images'}.npz"
    if resuming and path.exists():
      changes = FolderIndex.load(path).changes(index)
      if changes:
        where = f"config.data.path{'/' + name if name else ''}"
        raise ValueError(
            f"{where} changed since this run indexed it ({changes}): resuming would train on "
            f"another data stream; restore the folder, or delete {os.fspath(path)} to accept "
            "the change")
    elif write:
      index.save(path)
