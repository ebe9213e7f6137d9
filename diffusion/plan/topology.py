"""TPU topologies on any host: libtpu describes the devices of a slice without one.

`devices("v5p:2x2x1")` gives the abstract devices a program is compiled for;
`Chip` says what one of them holds (HBM) and computes (bf16 peak).
"""

import contextlib
import dataclasses
import os
import re
import sys
import tempfile

FORMS = ("v3:2x2", "v4:2x2x1", "v5e:2x4", "v5p:2x2x1", "v6e:2x4", "v5p:4x4x4")
_NAME = re.compile(r"^(v\d+[a-z]*|tpu\d+[a-z]*):\d+(x\d+){1,2}$")


@dataclasses.dataclass(frozen=True)
class Chip:
  """One JAX device of a TPU generation: HBM in GiB, dense bf16 peak in TFLOP/s (per device:
  a v3 device is one core, half a chip; v4 is compiled as megacore, a device a chip)."""
  kind: str
  hbm_gib: float | None
  peak_tflops: float | None


# HBM of one JAX device (vendor figures); the peaks are `platforms.PEAK_TFLOPS`'. More
# specific device kinds first.
HBM_GIB = (("TPU v3", 16.0), ("TPU v4", 32.0), ("TPU v5 lite", 16.0), ("TPU v5", 95.0),
           ("TPU v6 lite", 32.0))


def chip(device_kind: str) -> Chip:
  """The `Chip` of a device kind ("TPU v5 lite"); unknown figures None."""
  from diffusion.platforms import peak_tflops
  hbm = next((gib for kind, gib in HBM_GIB if device_kind.lower().startswith(kind.lower())), None)
  return Chip(device_kind, hbm, peak_tflops(device_kind))


@contextlib.contextmanager
def quiet():
  """Silences the process's standard error (file descriptor 2) inside the block: libtpu
  writes its warnings there from C++ (no TPU_ACCELERATOR_TYPE, no TPU_WORKER_HOSTNAMES on
  a host without a TPU)."""
  sys.stderr.flush()
  with tempfile.TemporaryFile() as sink:
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def devices(name: str, slices: int = 1) -> list:
  """The devices of the TPU topology `name` ("v5e:2x4": generation, then the chips along
  each axis), over `slices` slices joined by the data-centre network (their devices carry
  `slice_index`). ValueError naming --topology or --slices for what libtpu does not take,
  and for a missing libtpu."""
  if not isinstance(slices, int) or isinstance(slices, bool) or slices < 1:
    raise ValueError(f"`slices` must be a positive int; got {slices!r}")
  if not isinstance(name, str) or not _NAME.match(name):
    raise ValueError(f"`topology` {name!r} is not a TPU topology: give GENERATION:AxB[xC] (chips "
                     f"along each axis), e.g. {', '.join(FORMS)}")
  from jax._src import cloud_tpu_init
  if cloud_tpu_init.get_tpu_library_path() is None:
    raise ValueError("compiling for a TPU needs libtpu, which is not installed: "
                     "pip install 'ddpm-jax[tpu]' (it matches the installed jax)")
  from jax._src import hardware_utils
  if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
    # No TPU here to guard: libtpu's one-process lock would refuse a second plan at a time.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  options = {"chip_config_name": "megacore"} if name.startswith("v4:") else {}
  if slices > 1:
    options["num_slices"] = slices
  try:
    with quiet():
      topology = topologies.get_topology_desc(topology_name=name, platform="tpu", **options)
  except Exception as e:  # noqa: BLE001 (libtpu's own words say what it did not take)
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"`topology` {name!r}{f' `slices` {slices}' if slices > 1 else ''}: "
                     f"libtpu does not take it ({message.removeprefix('INVALID_ARGUMENT: ')}); "
                     f"accepted forms: {', '.join(FORMS)}") from None
  return list(topology.devices)
