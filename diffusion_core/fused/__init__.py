"""Sampling on CUDA through Triton kernels: the fused sampling network and its kernels.

- ``conv.py``      one fused convolution kernel (3x3 and 1x1 blocks, bias, SiLU, residual in one pass)
- ``resample.py``  2x bilinear upsampling and 2x2 average pooling of NHWC activations
- ``unet.py``      ``FusedUNet``, a trained ``UNet`` rebuilt from those kernels, and ``CudaGraphed``

Importing this package imports nothing; its modules import Triton (when installed). Only
``diffusion_core.runtime`` imports them, and only when a model is asked to sample through them, so
reading checkpoints, listing them and sampling eagerly never load Triton.
"""
