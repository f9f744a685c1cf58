"""Training-side code (torch; skipped where torch is not installed, as in the app's CI venv)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.seg.model import UNet3D, use_stable_instance_norm  # noqa: E402


def test_stable_instance_norm_matches_torch_and_is_exact_in_float64() -> None:
    torch.manual_seed(0)
    net = UNet3D(2, (4, 8)).eval()
    for p in net.parameters():  # non-trivial affine parameters
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 2, 16, 16, 24) * 3 + 50  # large mean: the ill-conditioned case
    with torch.no_grad():
        ref = net.double()(x.double()).numpy()
        n = use_stable_instance_norm(net)
        stable = net(x.double()).numpy()
    assert n == 2 * 2 + 2  # two norms per block: 2 encoder blocks + 1 decoder block
    np.testing.assert_allclose(stable, ref, rtol=0, atol=1e-9)


def test_stable_instance_norm_needs_affine_norm() -> None:
    from training.seg.model import StableInstanceNorm3d

    with pytest.raises(ValueError, match="affine"):
        StableInstanceNorm3d(torch.nn.InstanceNorm3d(4, affine=False))
