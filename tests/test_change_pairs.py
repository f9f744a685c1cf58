"""Synthetic visit pairs of the change-detection network (numpy/scipy only: no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from training.change.synth_pairs import PairSampler
from training.seg.synth_data import LesionBank


@pytest.fixture(scope="module")
def bank() -> LesionBank:
    """Two blocky lesions near the template's centre (white matter), so patches hold lesions."""
    from ms_core.imaging.anatomy import load_template

    shape = load_template().shape
    mask = np.zeros(shape, np.uint8)
    c = [s // 2 for s in shape]
    mask[c[0] - 20:c[0] - 14, c[1] - 4:c[1] + 4, c[2] + 10:c[2] + 16] = 1
    mask[c[0] + 14:c[0] + 20, c[1] - 4:c[1] + 4, c[2] + 10:c[2] + 16] = 1
    return LesionBank(mask[None], ("synthetic",), (np.argwhere(mask > 0).astype(np.int16),))


def _pairs(sampler: PairSampler, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [sampler.sample() for _ in range(n)]


def test_pairs_have_three_channels_two_labels_and_repeat_with_the_seed(bank: LesionBank
                                                                       ) -> None:
    a = _pairs(PairSampler(bank, 32, seed=3, lesion_fraction=1.0), 3)
    b = _pairs(PairSampler(bank, 32, seed=3, lesion_fraction=1.0), 3)
    for (x, y), (x2, y2) in zip(a, b, strict=True):
        assert x.shape == (3, 32, 32, 32) and y.shape == (2, 32, 32, 32)
        assert x.dtype == np.float32 and np.isfinite(x).all()
        assert np.array_equal(x[2], x[0] - x[1])  # the difference channel
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert not (y[0] * y[1]).any()  # tissue cannot both appear and vanish
        assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(a[0][0], a[1][0])


def test_no_change_pairs_have_no_label_and_only_noise_in_the_difference(bank: LesionBank
                                                                        ) -> None:
    sampler = PairSampler(bank, 32, seed=1, lesion_fraction=1.0, no_change_fraction=1.0,
                          protocol_change_fraction=0.0, registration_error=0.0)
    for x, y in _pairs(sampler, 4):
        assert not y.any()
        inside = x[0] > 0
        # Same protocol, no change: the visits differ by noise, bias and gain only.
        assert np.median(np.abs(x[2][inside])) < 0.15


def test_appearing_tissue_brightens_and_vanishing_tissue_darkens(bank: LesionBank) -> None:
    sampler = PairSampler(bank, 32, seed=2, lesion_fraction=1.0, no_change_fraction=0.0,
                          protocol_change_fraction=0.0, new_lesion_fraction=1.0,
                          registration_error=0.0)
    grew, shrank, still = [], [], []
    for x, y in _pairs(sampler, 12):
        inside = x[0] > 0
        grew.extend(x[2][(y[0] > 0) & inside])
        shrank.extend(x[2][(y[1] > 0) & inside])
        still.extend(x[2][(y.sum(0) == 0) & inside])
    assert len(grew) > 100 and len(shrank) > 0  # new lesions in every pair; some vanish
    assert np.median(grew) > 0.1 > 2 * abs(float(np.median(still)))
    assert np.median(shrank) < -0.1


@pytest.mark.parametrize("option", ["no_change_fraction", "protocol_change_fraction",
                                    "new_lesion_fraction"])
def test_pair_sampler_refuses_a_share_outside_0_1(bank: LesionBank, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        PairSampler(bank, 32, **{option: 1.5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="registration_error"):
        PairSampler(bank, 32, registration_error=-1.0)


def test_fate_odds_and_new_lesion_sizes_shape_the_labels(bank: LesionBank) -> None:
    from scipy import ndimage as ndi

    # Every lesion vanishes and no lesion is new: only the shrinking channel is labelled.
    vanish = PairSampler(bank, 32, seed=4, lesion_fraction=1.0, no_change_fraction=0.0,
                         new_lesion_fraction=0.0, fate_odds=(0, 0, 0, 0, 1))
    labelled = [y for _, y in _pairs(vanish, 4) if y.any()]
    assert labelled and all(not y[0].any() and y[1].any() for y in labelled)
    # Small new lesions only (stable masks): each new piece is 3-30 mm³ (1 mm voxels), and
    # there are more of them with a higher count.
    def pieces(count: tuple[int, int]) -> list[int]:
        sampler = PairSampler(bank, 32, seed=5, lesion_fraction=1.0, no_change_fraction=0.0,
                              new_lesion_fraction=1.0, fate_odds=(1, 0, 0, 0, 0),
                              new_lesion_mm3=(3.0, 30.0), new_lesion_count=count,
                              protocol_change_fraction=0.0)
        sizes = []
        for _, y in _pairs(sampler, 6):
            labels, _ = ndi.label(y[0] > 0, structure=np.ones((3, 3, 3)))
            sizes += list(np.bincount(labels.ravel())[1:])
        return sizes
    few, many = pieces((1, 1)), pieces((6, 8))
    assert few and max(few + many) <= 40 and len(many) > 2 * len(few)


@pytest.mark.parametrize(("option", "value"), [("grow_voxels", (2.0, 1.0)),
                                               ("new_lesion_mm3", (0.1, 10.0)),
                                               ("new_lesion_count", (0, 3)),
                                               ("fate_odds", (0.5, 0.5))])
def test_pair_sampler_refuses_recipe_options_out_of_range(bank: LesionBank, option: str,
                                                          value: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match=option):
        PairSampler(bank, 32, **{option: value})  # type: ignore[arg-type]
