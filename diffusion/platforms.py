"""The platform a program is being built for, which is not always the host's.

A plan (`ddpm plan`) traces the train step on a CPU host for a TPU topology: the
choices made while tracing (unrolling a scan, splitting 3-D convolutions, the
attention kernel) must be those of the TPU. Code that builds a program for a mesh
traces it under `building_for(mesh)`; layers below read `current()`.
"""

import contextlib
import contextvars
import functools

import jax

_PLATFORM = contextvars.ContextVar("diffusion_target_platform", default=None)


def current() -> str:
  """"cpu", "gpu"/"cuda", "tpu", ...: the platform of the program being traced, or JAX's
  default backend outside `building_for`."""
  return _PLATFORM.get() or jax.default_backend()


def of_mesh(mesh) -> str:
  """The platform of a mesh's devices (a TPU topology's on a CPU host: "tpu")."""
  return mesh.devices.flat[0].platform


@contextlib.contextmanager
def building_for(mesh):
  """`current()` is the platform of `mesh`'s devices inside the block."""
  token = _PLATFORM.set(of_mesh(mesh))
  try:
    yield
  finally:
    _PLATFORM.reset(token)


def traced_for(mesh, fn):
  """`fn`, traced with `current()` set to the platform of `mesh`'s devices."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with building_for(mesh):
      return fn(*args, **kwargs)
  return wrapper


# Dense peaks (TFLOP/s) of one JAX device in bfloat16 and float32, by device kind (vendor figures;
# the first name found in the kind wins).
PEAK_TFLOPS = [("H100 PCIe", 756.0, 378.0), ("H100", 989.0, 494.0), ("H200", 989.0, 494.0),
               ("A100", 312.0, 156.0), ("TPU v3", 61.5, 61.5), ("TPU v4", 275.0, 275.0),
               ("TPU v5 lite", 197.0, 197.0), ("TPU v5e", 197.0, 197.0), ("TPU v5", 459.0, 459.0),
               ("TPU v6 lite", 918.0, 918.0)]


def peak_tflops(device_kind: str, dtype: str = "bfloat16") -> float | None:
  """The device's dense peak for `dtype` from PEAK_TFLOPS, or None if it is not listed."""
  for name, bf16, f32 in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else f32
  return None
