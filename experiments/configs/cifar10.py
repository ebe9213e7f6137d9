"""DDPM on CIFAR-10 32×32, unconditional: the paper's exact settings (Ho et al. 2020, App. B).

35,746,307 parameters: ch 128, ch_mult (1, 2, 2, 2), 2 ResNet blocks per
resolution, self-attention at 16×16, dropout 0.1; T = 1000 linear betas
1e-4..0.02, L_simple, σ_t² = β_t; Adam lr 2e-4 with 5,000 warm-up steps,
gradient clipping at 1, batch 128, EMA 0.9999, random flips, 800k steps (a
TPU v3-8 ran about 21 steps/s). The paper reports FID 3.17, IS 9.46 and NLL
≤ 3.75 bits/dim (Table 1).

  ddpm train --config experiments/configs/cifar10.py --workdir runs/cifar10 \
      --config.data.data_dir=/path/to/tensorflow_datasets

needs CIFAR-10 prepared by TFDS as ArrayRecord (`tfds build cifar10
--file_format=array_record` where the network is reachable). On TPU or GPU
add --config.model.dtype=bfloat16. The released checkpoint loads with
`ddpm convert DIFFUSERS_DIR OUT_DIR` (diffusers folder
google/ddpm-cifar10-32, downloaded by you; nothing is fetched here).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # The training method: "" = DDPM (or config.distill.method in a distillation's config);
  # "flow" (flow matching) or "edm" (EDM's training) on this config's data and network
  # (`--config.method=flow`; their own settings: `digits_fm.py`, `digits_edm.py`), or an
  # import path "package.module:Class" of a Method of your own.
  config.method = ""

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.split = "train"
  config.data.data_dir = ""  # TFDS data_dir: a local folder or a bucket; "" = TFDS's default
  config.data.path = ""  # the image folder, for name = "folder" or condition = "pairs"
  config.data.condition = ""  # image-to-image: "pairs" (path/input, path/target) or "degrade"
  config.data.degradations = ""  # for "degrade": some of blur,colour_cast,low_light,downscale
  config.data.channels = 3
  config.data.random_flip = True
  # The loader: worker processes that read and transform examples (0: threads of this
  # process, enough for arrays in memory; decoding image files fast enough to keep an
  # accelerator fed wants several), and what a broken file does: "raise" stops the run naming it,
  # "skip" passes over it (logged, counted in the metrics' data_skipped).
  config.data.num_workers = 8
  config.data.on_error = "raise"
  # Data of other shapes (see README, "Your own data and network"): () = (image_size,
  # image_size, channels); e.g. (32, 32, 32, 1) volumes, (128, 1) sequences, (16, 3) points.
  config.data.shape = ()
  config.data.kind = ""  # "" = by rank (image, volume, sequence); "points" for point sets
  config.data.dtype = ""  # "" = uint8 for images and volumes, float32 otherwise
  config.data.scale = 1.0  # float data: model units = data / scale

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.ch = 128
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1
  config.model.num_classes = 0  # > 0: class-conditional (labels from the data)
  config.model.learned_variance = False  # True for variance = learned_range / learned
  config.model.cond_channels = 0  # = data.channels with data.condition set
  config.model.dtype = "float32"  # "bfloat16" on TPU/GPU
  config.model.remat = False

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "linear"
  config.diffusion.num_steps = 1000
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.diffusion.prediction = "eps"
  config.diffusion.variance = "fixed_large"
  config.diffusion.loss = "simple"
  config.diffusion.vlb_weight = 0.001  # λ of the hybrid loss
  config.diffusion.timestep_sampler = "uniform"

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.decay_steps = 0  # > 0: cosine decay of the lr to 0 at this step
  config.optim.grad_clip = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 800_000
  config.train.batch_size = 128
  config.train.label_dropout = 0.0  # for classifier-free guidance, with num_classes > 0
  config.train.ema_decay = 0.9999
  config.train.ema_warmup = False
  # Power-function EMAs and their snapshots for post-hoc EMA (`ddpm ema`; see digits.py):
  # off here, the paper's recipe; e.g. (0.05, 0.10) and 20_000 keep two more copies of the
  # parameters in the state and 40 snapshots of both (11 GiB) over the 800k steps.
  config.train.power_ema = ()
  config.train.ema_snapshot_every = 0
  config.train.steps_per_dispatch = 1
  config.train.log_every = 100
  config.train.checkpoint_every = 10_000
  config.train.keep_checkpoints = 3
  config.train.sample_every = 50_000
  config.train.num_samples = 64
  config.train.sample_sampler = "ddpm"  # the grids' sampler: ddpm, ddim or dpm++
  config.train.sample_steps = 0  # 0: the sampler's default (ddpm: every step)

  # The device mesh: the train state (parameters, Adam moments, EMA) is split over `fsdp`
  # devices (ZeRO-3; 1 = pure data parallelism, the state whole on every device), batches
  # over all of them; data = -1 takes the devices left. Leaves of fewer than min_shard_size
  # elements stay whole. Changing these between resumes is fine.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.min_shard_size = 2 ** 14
  return config
