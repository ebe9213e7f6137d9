"""The applications of DDPMs, each a composition of the core's functions, on data of any kind
(`config.data`: images, volumes, sequences, point sets). They take data in the data's units;
`inpaint` returns the data's units and dtype (the known part kept exactly), `denoise`,
`enhance` and `anomaly_scores`' reconstructions float32 in the model's units
(`DataSpec.from_model` gives the data's).

- `inpaint`: RePaint (Lugmayr et al. 2022), known positions kept exactly; on
  point sets, motif scaffolding.
- `denoise`: given noisy data mapped onto the forward process, then the
  reverse chain; several samples give a per-element mean and uncertainty.
- `enhance`: enhancement with a model conditioned on the degraded data.
- `anomaly`: partial diffusion and reconstruction; per-example scores, maps
  per position, AUROC.
"""

from diffusion.applications.anomaly import anomaly_scores, auroc
from diffusion.applications.denoise import denoise, noise_step
from diffusion.applications.enhance import enhance
from diffusion.applications.inpaint import inpaint, repaint_schedule

__all__ = ["anomaly_scores", "auroc", "denoise", "enhance", "inpaint", "noise_step",
           "repaint_schedule"]
