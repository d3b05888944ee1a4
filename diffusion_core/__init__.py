"""diffusion-explorer core: schedules, U-Net, samplers, data, training, checkpoints, FID.

Map: schedules (noise schedules, time grids) -> diffusion (q(x_t|x_0), posterior, step math)
-> samplers (generators of step states) <- model (Denoiser around a network) <- networks (network.kind
-> unet.UNet, ...) <- checkpoint (safetensors + JSON, through files) <- runtime (folded, compiled
or fused: the Triton kernels in fused/) <- generate (grids, trajectories, interpolation, inversion);
training; cli/commands wire it for users. This package never imports streamlit.
"""

__version__ = "0.1.0"
