"""TensorBoard event files of scalars, written without TensorFlow or tensorboardX.

An event file is a TFRecord file (each record: its length as a little-endian uint64, the
masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of the data) of `Event`
protocol buffers (tensorflow/core/util/event.proto): a first one with file_version
"brain.Event:2", then one per step holding a `Summary` of (tag, simple_value) pairs. Only the
few fields that scalars need are encoded here. (tensorboardX imports PyTorch when it is
installed, about 2 s at the start of every training process; this module imports nothing.)
"""

import socket
import struct
import time

from etils import epath

from diffusion import paths

PART_BYTES = 4 << 20  # an object-store event file is continued in a new one past this


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
  crc = crc32c(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def record(data: bytes) -> bytes:
  """One TFRecord: length, its CRC, data, the data's CRC."""
  length = struct.pack("<Q", len(data))
  return length + _masked_crc(length) + data + _masked_crc(data)


def _varint(n: int) -> bytes:
  """Protocol buffers' base-128 varint; a negative int64 as its 64-bit two's complement."""
  n &= (1 << 64) - 1
  out = bytearray()
  while True:
    low, n = n & 0x7F, n >> 7
    out.append(low | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int, *, file_version: str | None = None,
          scalars: dict[str, float] | None = None) -> bytes:
  """An Event: wall_time (1, double), step (2, int64), file_version (3) or summary (5), whose
  values (1) are each a tag (1) and a simple_value (2, float)."""
  message = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
  if file_version is not None:
    message += _bytes_field(3, file_version.encode())
  if scalars:
    values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + b"\x15" +
                                   struct.pack("<f", value)) for tag, value in scalars.items())
    message += _bytes_field(5, values)
  return message


class EventWriter:
  """Appends scalar events to `directory`/events.out.tfevents.<time>.<host>, a local folder or
  an object store (`paths.Appender`: uploaded again at most every minute, continued in a new
  part past PART_BYTES)."""

  def __init__(self, directory: epath.Path):
    now = time.time()
    name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}"
    self._file = paths.Appender(directory / name, flush_seconds=60.0, rotate_bytes=PART_BYTES)
    self._file.write(record(event(now, 0, file_version="brain.Event:2")))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self._file.write(record(event(time.time(), step,
                                  scalars={k: float(v) for k, v in values.items()})))

  def close(self) -> None:
    self._file.close()
