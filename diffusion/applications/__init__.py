"""The imaging applications of DDPMs, each a composition of the core's functions.

- `inpaint`: RePaint (Lugmayr et al. 2022), known pixels kept exactly.
- `denoise`: a given noisy image mapped onto the forward process, then the
  reverse chain; several samples give a per-pixel mean and uncertainty.
- `enhance`: image-to-image with a model conditioned on the degraded image.
- `anomaly`: partial diffusion and reconstruction; per-image scores, per-pixel
  maps, AUROC.
"""

from diffusion.applications.anomaly import anomaly_scores, auroc
from diffusion.applications.denoise import denoise, noise_step
from diffusion.applications.enhance import enhance
from diffusion.applications.inpaint import inpaint, repaint_schedule

__all__ = ["anomaly_scores", "auroc", "denoise", "enhance", "inpaint", "noise_step",
           "repaint_schedule"]
