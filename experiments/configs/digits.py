"""DDPM on scikit-learn's handwritten digits (8×8, 1,797 images): the CPU default.

Needs no download (the digits ship inside scikit-learn) and no accelerator:

  ddpm train --config experiments/configs/digits.py --workdir runs/digits

trains for 2,200 steps (batch 64, lr 4e-3 decayed to 0 along a half cosine) and writes
sample grids (DPM-Solver++, 20 steps) to runs/digits/samples/. The same command resumes an
interrupted run. On a 2-core CPU it takes about four minutes, sampling included (one JAX device
per core). It samples as well as the earlier recipe of 3,000 steps at a constant lr 1e-3
(digits-FID 4.07 / 3.53 with DDIM 50 / DPM-Solver++ 10 against 4.05 / 3.41; seed-to-seed
noise about 0.4; docs/benchmarks.md).
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
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.split = "train"  # digits: train (1,500), test (297) or all
  config.data.data_dir = ""  # TFDS data_dir: a local folder or a bucket; "" = TFDS's default
  config.data.path = ""  # the image folder, for name = "folder" or condition = "pairs"
  config.data.condition = ""  # image-to-image: "pairs" (path/input, path/target) or "degrade"
  config.data.degradations = ""  # for "degrade": some of blur,colour_cast,low_light,downscale
  config.data.channels = 1
  config.data.random_flip = False  # a mirrored digit is no digit
  # The loader: worker processes that read and transform examples (0: threads of this
  # process, enough for arrays in memory; decoding image files fast enough to keep an
  # accelerator fed wants several), and what a broken file does: "raise" stops the run naming it,
  # "skip" passes over it (logged, counted in the metrics' data_skipped).
  config.data.num_workers = 0
  config.data.on_error = "raise"
  # Data of other shapes (see README, "Your own data and network"): () = (image_size,
  # image_size, channels); e.g. (32, 32, 32, 1) volumes, (128, 1) sequences, (16, 3) points.
  config.data.shape = ()
  config.data.kind = ""  # "" = by rank (image, volume, sequence); "points" for point sets
  config.data.dtype = ""  # "" = uint8 for images and volumes, float32 otherwise
  config.data.scale = 1.0  # float data: model units = data / scale

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.ch = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  config.model.num_groups = 8
  config.model.num_classes = 0  # > 0: class-conditional (labels from the data)
  config.model.learned_variance = False  # True for variance = learned_range / learned
  config.model.cond_channels = 0  # = data.channels with data.condition set
  config.model.dtype = "float32"
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
  config.diffusion.snr_gamma = 0.0  # min-SNR-γ weighting of L_simple (Hang et al.: 5); 0: off
  config.diffusion.timestep_sampler = "uniform"
  # config.diffusion.clip_x0: unset, the samplers clip x0 to [-1, 1] for uint8 data only

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 4e-3
  config.optim.warmup_steps = 100
  config.optim.decay_steps = 2200  # > 0: cosine decay of the lr to 0 at this step
  config.optim.grad_clip = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 2200
  config.train.batch_size = 64
  config.train.label_dropout = 0.0  # for classifier-free guidance, with num_classes > 0
  config.train.ema_decay = 0.999
  config.train.ema_warmup = True
  # Power-function EMAs (Karras et al. 2024) beside the classic one, by σ_rel, and snapshots
  # of them every ema_snapshot_every steps in workdir/ema_snapshots/: `ddpm ema` rebuilds the
  # average of any σ_rel after training (`ddpm ema --workdir DIR --sweep 0.03,0.05,0.1
  # --digits`). () and 0: none.
  config.train.power_ema = (0.05, 0.10)
  config.train.ema_snapshot_every = 200
  config.train.steps_per_dispatch = 1
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3
  config.train.sample_every = 1100
  config.train.num_samples = 64
  config.train.sample_sampler = "dpm++"  # the grids' sampler: ddpm, ddim or dpm++
  config.train.sample_steps = 0  # 0: the sampler's default (ddpm: every step; dpm++: 20)

  # The device mesh: the train state (parameters, Adam moments, EMA) is split over `fsdp`
  # devices (ZeRO-3; 1 = pure data parallelism, the state whole on every device), batches
  # over all of them; data = -1 takes the devices left. Leaves of fewer than min_shard_size
  # elements stay whole. Changing these between resumes is fine.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.min_shard_size = 2 ** 14
  return config
