"""What `ddpm bench*` time (imported by `diffusion/cli/bench.py` alone, when a bench command runs):
the network and sampler timings (`timing.py`), the PyTorch reference they are compared with
(`torch_reference.py`, which needs the optional `torch` and `diffusers`), and the input
pipeline's throughput (`throughput.py`). Nothing else in the package imports them."""
