"""A compact 3D U-Net for FLAIR (+ optional T1) lesion segmentation.

Input (N, 2, X, Y, Z) float32: channel 0 FLAIR, channel 1 T1 (zeros when absent), both
normalised by :func:`ms_core.imaging.preprocess.normalize_intensity`. Output (N, 1, X, Y, Z) logits.
Spatial sizes must be multiples of 2 ** (levels - 1) (8 for the default 4 levels).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NORMS", "StableInstanceNorm3d", "UNet3D", "architecture_of", "describe",
           "use_stable_instance_norm"]


#: Normalisation layers a :class:`UNet3D` can use.
NORMS = ("instance", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"unknown normalisation {kind!r}; expected one of {NORMS}")


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: str = "instance") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class StableInstanceNorm3d(nn.Module):
    """Instance norm written as per-axis means, numerically equal to ``nn.InstanceNorm3d``.

    Used for ONNX export only. onnxruntime's ``InstanceNormalization`` and whole-volume
    ``ReduceMean`` accumulate in float32 over all X*Y*Z voxels; on patches with a large
    constant background that cost up to 1e-3 in probability against torch. Reducing one
    axis at a time (a few dozen terms per sum) and centring before the variance brings
    onnxruntime within ~3e-6 of a float64 reference (measured in ``training.seg.export``).
    """

    def __init__(self, norm: nn.InstanceNorm3d) -> None:
        super().__init__()
        if norm.weight is None or norm.bias is None:
            raise ValueError("StableInstanceNorm3d needs an affine InstanceNorm3d")
        self.weight = norm.weight
        self.bias = norm.bias
        self.eps = float(norm.eps)

    @staticmethod
    def _mean(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=4, keepdim=True).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self._mean(x)
        var = self._mean(centred * centred)
        shape = (1, -1, 1, 1, 1)
        return (centred / torch.sqrt(var + self.eps) * self.weight.view(shape)
                + self.bias.view(shape))


def use_stable_instance_norm(module: nn.Module) -> int:
    """Replace every ``nn.InstanceNorm3d`` in ``module`` in place; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.InstanceNorm3d):
            setattr(module, name, StableInstanceNorm3d(child))
            count += 1
        else:
            count += use_stable_instance_norm(child)
    return count


class UNet3D(nn.Module):
    """U-Net with ``len(widths)`` levels, strided-conv down- and transposed-conv upsampling.

    ``norm="instance"`` normalises every feature map by the statistics of the window it sees, so
    the output at a voxel depends on where the sliding window falls (how much background, how
    many lesions it holds). ``norm="batch"`` uses statistics learned in training at inference:
    the network is then an ordinary convolution, and only the zero padding at the window's
    edges still depends on where the window falls.
    """

    def __init__(self, in_channels: int = 2, widths: tuple[int, ...] = (16, 32, 64, 128),
                 norm: str = "instance", out_channels: int = 1) -> None:
        super().__init__()
        self.widths = widths
        self.norm = norm
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        c = in_channels
        for i, w in enumerate(widths):
            self.enc.append(_Block(c, w, norm))
            if i < len(widths) - 1:
                self.down.append(nn.Conv3d(w, w, 2, stride=2))
            c = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(widths[::-1][:-1], widths[::-1][1:], strict=True):
            self.up.append(nn.ConvTranspose3d(w_hi, w_lo, 2, stride=2))
            self.dec.append(_Block(2 * w_lo, w_lo, norm))
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x)
            if i < len(self.down):
                skips.append(x)
                x = self.down[i](x)
        for up, dec, skip in zip(self.up, self.dec, skips[::-1], strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def architecture_of(state: dict[str, tuple[int, ...]]) -> tuple[tuple[int, ...], str]:
    """(widths, norm) of a :class:`UNet3D` from its state-dict names and shapes."""
    n_levels = sum(1 for k in state if k.startswith("enc.") and k.endswith(".net.0.weight"))
    if n_levels == 0:
        raise ValueError("not a UNet3D state dict: no enc.N.net.0.weight entries")
    widths = tuple(int(state[f"enc.{i}.net.0.weight"][0]) for i in range(n_levels))
    norm = "batch" if any(k.endswith(".running_mean") for k in state) else "instance"
    return widths, norm


def describe(net: UNet3D) -> str:
    """One line for the model card: levels, normalisation, parameter count."""
    norm = ("batch norm (statistics re-estimated after training, fixed at inference)"
            if net.norm == "batch" else
            "instance norm (exported as per-axis means for float32 accuracy)")
    return (f"3D U-Net, widths {list(net.widths)}, {norm}, LeakyReLU; "
            f"{sum(p.numel() for p in net.parameters())} parameters")
