"""The structure measures of the worked examples: chain statistics, superposition, scaffold RMSD."""

import numpy as np

from diffusion.evaluation.structure import chain_statistics, scaffold_rmsd, superpose


def rotations(n, seed):
  """n proper rotations [n, 3, 3] from the QR decomposition of Gaussian matrices."""
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, 3, 3)))
  q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
  q[np.linalg.det(q) < 0, :, 0] *= -1
  return q


def test_chain_statistics_of_a_square_zigzag():
  # Points on a zigzag with 3.8 Å steps at right angles: every bond 3.8, every angle 90°.
  x = np.array([[[0, 0, 0], [3.8, 0, 0], [3.8, 3.8, 0], [7.6, 3.8, 0]]])
  stats = chain_statistics(x)
  np.testing.assert_allclose(stats["ca_ca_distance"], 3.8)
  np.testing.assert_allclose(stats["bond_angle"], 90.0)
  centre = x[0].mean(0)
  np.testing.assert_allclose(stats["radius_of_gyration"],
                             np.sqrt(np.mean(np.sum((x[0] - centre) ** 2, -1))))


def test_superpose_undoes_a_rotation_and_translation():
  rng = np.random.default_rng(0)
  target = rng.normal(size=(5, 12, 3)) * 4
  moving = target @ rotations(5, 1) + rng.normal(size=(5, 1, 3)) * 10
  np.testing.assert_allclose(superpose(moving, target), target, atol=1e-9)
  # On a subset: the rest follows the same rigid motion, wherever it lies.
  on = np.arange(12) < 4
  bent = moving.copy()
  bent[:, 4:] += 5.0
  aligned = superpose(bent, target, on)
  np.testing.assert_allclose(aligned[:, :4], target[:, :4], atol=1e-9)
  assert np.abs(aligned[:, 4:] - target[:, 4:]).max() > 1.0
  # A mirror image is not superposed: a proper rotation cannot undo a reflection.
  mirrored = target * np.array([1, 1, -1])
  assert np.abs(superpose(mirrored, target) - target).max() > 0.1


def test_scaffold_rmsd_counts_the_generated_points_only():
  truth = np.zeros((1, 4, 3))
  completed = np.array([[[9, 9, 9], [9, 9, 9], [3, 0, 0], [0, 4, 0]]], float)
  known = np.array([True, True, False, False])
  np.testing.assert_allclose(scaffold_rmsd(completed, truth, known), [np.sqrt((9 + 16) / 2)])


def test_evaluate_synthetic_refuses_samples_that_are_not_finite(tmp_path, capsys):
  """8 NaN traces of 32 were scored as 1-cycle sines (a NaN spectrum's peak is its first bin)
  and the command exited 0 with finite figures."""
  from diffusion import cli
  t = np.arange(64) / 64
  traces = np.sin(2 * np.pi * np.arange(1, 33)[:, None] % 4 * t)[..., None].astype(np.float32)
  traces[::4] = np.nan
  np.savez(tmp_path / "s.npz", arr_0=traces)
  assert cli.main(["evaluate", "--samples", str(tmp_path / "s.npz"), "--synthetic",
                   "sinusoids"]) == 2
  err = capsys.readouterr().err
  assert err.splitlines() == ["ddpm evaluate: error: 8 of 32 samples are not finite (NaN or "
                              "inf): their statistics would mean nothing"]
