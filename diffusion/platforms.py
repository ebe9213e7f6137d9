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
