"""Synthetic training patches (numpy/scipy only, so these run without torch)."""

from __future__ import annotations

import numpy as np
import pytest

from training.seg.synth_data import LesionBank, PatchSampler, correlated_noise


def _lag1_correlation(n: np.ndarray, axis: int) -> float:
    a = np.moveaxis(n, axis, 0)
    return float(np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1])


@pytest.mark.parametrize("sigma_vox", [0.0, 0.6, 1.2])
def test_correlated_noise_has_unit_variance(sigma_vox: float) -> None:
    n = correlated_noise(np.random.default_rng(0), (40, 40, 40), sigma_vox)
    assert n.dtype == np.float32
    assert abs(float(n.mean())) < 0.05
    assert float(n.std()) == pytest.approx(1.0, abs=0.05 if sigma_vox == 0 else 1e-3)


def test_correlated_noise_correlates_neighbours_more_with_wider_kernels() -> None:
    rng = np.random.default_rng(1)
    white, narrow, mid, wide = (correlated_noise(rng, (48, 48, 48), s)
                                for s in (0.0, 0.5, 1.0, 1.5))
    for axis in range(3):
        r = [_lag1_correlation(n, axis) for n in (white, narrow, mid, wide)]
        assert abs(r[0]) < 0.03
        assert r[0] < r[1] < r[2] < r[3]
        # Kernel sigma s (well sampled from 1 voxel): neighbour correlation exp(-1 / (4 s^2)).
        assert r[2] == pytest.approx(np.exp(-1 / 4), abs=0.03)
        assert r[3] == pytest.approx(np.exp(-1 / 9), abs=0.03)


@pytest.fixture(scope="module")
def bank() -> LesionBank:
    from ms_core.imaging.anatomy import load_template

    shape = load_template().shape
    mask = np.zeros(shape, np.uint8)
    c = [s // 2 for s in shape]
    mask[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] + 10:c[2] + 16] = 1
    return LesionBank(mask[None], ("synthetic",), (np.argwhere(mask > 0).astype(np.int16),))


def _template_voxel(mm: tuple[float, float, float]) -> np.ndarray:
    """The MNI152 template voxel (int, 3) nearest to the MNI point ``mm``."""
    from ms_core.imaging.anatomy import load_template

    to_vox = np.linalg.inv(load_template().affine)
    return np.rint(to_vox[:3, :3] @ np.array(mm) + to_vox[:3, 3]).astype(int)


def test_sampler_rejects_an_unknown_noise_model(bank: LesionBank) -> None:
    with pytest.raises(ValueError, match="noise must be one of"):
        PatchSampler(bank, 32, noise="pink")


def test_both_noise_models_give_valid_patches(bank: LesionBank) -> None:
    patches = {}
    for noise in ("white", "mixed"):
        sampler = PatchSampler(bank, 32, seed=7, lesion_fraction=1.0, noise=noise)
        x, y = sampler.sample()
        assert x.shape == (2, 32, 32, 32) and y.shape == (1, 32, 32, 32)
        assert x.dtype == np.float32 and np.isfinite(x).all() and (x >= 0).all()
        assert set(np.unique(y)) <= {0.0, 1.0}
        patches[noise] = x
    assert not np.array_equal(patches["white"], patches["mixed"])


def test_sampler_rejects_an_unknown_lesion_model_or_winsorise_share(bank: LesionBank) -> None:
    with pytest.raises(ValueError, match="lesion_model must be one of"):
        PatchSampler(bank, 32, lesion_model="bright")
    with pytest.raises(ValueError, match="winsorise is a share"):
        PatchSampler(bank, 32, winsorise=1.5)


def test_varied_lesions_get_own_contrasts_and_a_fainter_border(bank: LesionBank) -> None:
    sampler = PatchSampler(bank, 32, seed=3, lesion_model="varied", lesion_contrast=(1.2, 2.4))
    label = np.zeros((32, 32, 32), np.float32)
    label[4:12, 4:12, 4:12] = 1.0
    label[20:28, 20:28, 20:28] = 1.0
    from scipy import ndimage as ndi

    lesion = ndi.gaussian_filter(label, 0.7)  # partial-volume fringe around both lesions
    fringe = (lesion > 0.05) & (label == 0)
    differ = 0
    for _ in range(5):
        excess = sampler._lesion_excess(sampler.rng, lesion, label)
        assert excess.dtype == np.float32
        assert (excess[lesion <= 0.05] == 0).all() and (excess[fringe] > 0).all()
        assert excess[label > 0].min() >= 0.2 * 0.6 - 1e-6 and excess.max() <= 1.4 + 1e-6
        cores = excess[8, 8, 8], excess[24, 24, 24]
        for core, border in zip(cores, (excess[4, 8, 8], excess[20, 24, 24]), strict=True):
            assert border < core
        differ += abs(cores[0] - cores[1]) > 1e-3
    assert differ == 5


@pytest.mark.parametrize(("model", "expected"), [("uniform", "none"), ("varied", "all"),
                                               ("mixed", "some")])
def test_lesion_model_decides_which_patches_get_varied_lesions(bank: LesionBank, model: str,
                                                               expected: str) -> None:
    sampler = PatchSampler(bank, 32, seed=5, lesion_fraction=1.0, lesion_model=model)
    calls = []
    real = sampler._lesion_excess

    def spy(*args: object) -> np.ndarray:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    sampler._lesion_excess = spy  # type: ignore[method-assign]
    n = 12
    for i in range(n):
        sampler.sample()
        assert len(calls) <= i + 1
    got = "none" if not calls else "all" if len(calls) == n else "some"
    assert got == expected


def test_winsorised_flair_has_a_plateau_at_its_maximum(bank: LesionBank) -> None:
    plateaus = {}
    for share in (0.0, 1.0):
        sampler = PatchSampler(bank, 32, seed=11, lesion_fraction=1.0, winsorise=share,
                               lesion_contrast=(2.2, 2.6))
        counts = []
        for _ in range(3):
            flair = sampler.sample()[0][0]
            counts.append(int((flair == flair.max()).sum()))
        plateaus[share] = min(counts)
    assert plateaus[0.0] == 1  # a continuous image has one brightest voxel
    assert plateaus[1.0] >= 10  # clipped lesion cores share the cap


def test_grey_matter_floor_keeps_lesions_above_cortex_and_draws_no_extra_number() -> None:
    from training.seg.synth_data import _draw_contrast

    faint = (1.15, 1.9)
    lesion_below_gm = 0
    for seed in range(200):
        free = _draw_contrast(np.random.default_rng(seed), faint)
        floored = _draw_contrast(np.random.default_rng(seed), faint, 1.05)
        lesion_below_gm += free.flair["lesion"] < free.flair["gm"]
        assert floored.flair["lesion"] >= 1.05 * floored.flair["gm"] - 1e-9
        # Same random stream: every other intensity is unchanged, and a lesion already above
        # the floor keeps its own contrast.
        assert {k: v for k, v in floored.flair.items() if k != "lesion"} == \
            {k: v for k, v in free.flair.items() if k != "lesion"}
        assert floored.t1 == free.t1
        if free.flair["lesion"] >= 1.05 * free.flair["gm"]:
            assert floored.flair["lesion"] == free.flair["lesion"]
    assert lesion_below_gm > 20  # without the floor, faint lesions often sit below cortex


def test_grey_matter_floor_also_bounds_varied_lesions(bank: LesionBank) -> None:
    sampler = PatchSampler(bank, 32, seed=3, lesion_model="varied", lesion_contrast=(1.1, 1.3))
    label = np.zeros((32, 32, 32), np.float32)
    label[8:16, 8:16, 8:16] = 1.0
    excess = sampler._lesion_excess(sampler.rng, label, label, floor=1.6)
    assert excess[12, 12, 12] == pytest.approx(0.6, abs=1e-6)  # the core sits at the floor
    assert excess.max() == pytest.approx(0.6, abs=1e-6)


def test_sampler_rejects_a_grey_matter_floor_outside_its_range(bank: LesionBank) -> None:
    with pytest.raises(ValueError, match="lesion_gm_floor"):
        PatchSampler(bank, 32, lesion_gm_floor=2.0)


def test_contrast_power_makes_faint_lesions_common_and_keeps_bright_ones(bank: LesionBank) -> None:
    from training.seg.synth_data import _draw_contrast

    def ratios(power: float) -> np.ndarray:
        rng = np.random.default_rng(4)
        draws = [_draw_contrast(rng, (1.15, 2.6), contrast_power=power) for _ in range(2000)]
        return np.array([d.flair["lesion"] / d.flair["wm"] for d in draws])

    uniform, skewed = ratios(1.0), ratios(2.0)
    assert uniform.min() >= 1.15 and skewed.min() >= 1.15 and skewed.max() <= 2.6
    assert np.mean(uniform < 1.9) == pytest.approx(0.75 / 1.45, abs=0.03)
    assert np.mean(skewed < 1.9) == pytest.approx(np.sqrt(0.75 / 1.45), abs=0.03)  # 72 %
    assert np.mean(skewed > 2.3) > 0.1  # bright lesions are still drawn
    with pytest.raises(ValueError, match="contrast_power"):
        PatchSampler(bank, 32, contrast_power=0.0)


def test_focus_fraction_centres_lesion_patches_on_the_hard_zones() -> None:
    from ms_core.imaging.anatomy import load_template
    from ms_core.lesions.location import mni_zones

    tpl = load_template()
    mask = np.zeros(tpl.shape, np.uint8)
    small = _template_voxel((0.0, -25.0, -30.0))  # brainstem: infratentorial, 4^3 voxels
    mask[small[0]:small[0] + 4, small[1]:small[1] + 4, small[2]:small[2] + 4] = 1
    large = _template_voxel((25.0, -10.0, 30.0))  # deep white matter about 67 mm away, 8^3 voxels
    mask[large[0]:large[0] + 8, large[1]:large[1] + 8, large[2]:large[2] + 8] = 1
    bank = LesionBank(mask[None], ("two",), (np.argwhere(mask > 0).astype(np.int16),))
    zones = mni_zones().masks
    assert zones["infratentorial"][tuple(small)] and not zones["infratentorial"][tuple(large)]

    focused = PatchSampler(bank, 48, seed=5, lesion_fraction=1.0, focus_fraction=1.0)
    assert len(focused.focus_voxels[0]) == 64  # the brainstem cube only
    # Every lesion patch now holds the small cube (<= 64 voxels * 1.15^3), never the large one.
    sizes = [float(focused.sample()[1].sum()) for _ in range(6)]
    assert all(0 < v < 120 for v in sizes), sizes
    plain = PatchSampler(bank, 48, seed=5, lesion_fraction=1.0)
    assert plain.focus_voxels == []
    assert max(float(plain.sample()[1].sum()) for _ in range(6)) > 200  # mostly the large cube
    with pytest.raises(ValueError, match="focus_fraction"):
        PatchSampler(bank, 48, focus_fraction=1.5)


def test_focus_balanced_centres_the_rare_zone_as_often_as_the_common_one() -> None:
    from ms_core.imaging.anatomy import load_template
    from ms_core.lesions.location import mni_zones

    tpl = load_template()
    zones = mni_zones().masks
    mask = np.zeros(tpl.shape, np.uint8)
    stem = _template_voxel((0.0, -25.0, -30.0))  # brainstem: infratentorial, 3^3 voxels
    mask[stem[0]:stem[0] + 3, stem[1]:stem[1] + 3, stem[2]:stem[2] + 3] = 1
    # Juxtacortical voxels: 40 times as many as the brainstem's.
    juxta = np.argwhere(zones["juxtacortical"])[::97][:27 * 40]
    mask[juxta[:, 0], juxta[:, 1], juxta[:, 2]] = 1
    bank = LesionBank(mask[None], ("two",), (np.argwhere(mask > 0).astype(np.int16),))
    fossa = zones["infratentorial"]

    def share_in_fossa(sampler: PatchSampler) -> float:
        centres = []
        for _ in range(200):
            coords = sampler.patch_coords()[1]
            centres.append(np.rint(coords[:, coords.shape[1] // 2]).astype(int))
        c = np.clip(np.array(centres), 0, np.array(fossa.shape) - 1)
        return float(fossa[c[:, 0], c[:, 1], c[:, 2]].mean())

    kw = {"lesion_fraction": 1.0, "focus_fraction": 1.0}
    balanced = PatchSampler(bank, 32, seed=2, focus_balanced=True, **kw)
    assert [len(z) for z in balanced.focus_by_zone[0]] == [27 * 40, 27]
    plain = PatchSampler(bank, 32, seed=2, **kw)
    assert plain.focus_by_zone == []
    # Centres move up to a quarter patch (8 voxels) from the drawn voxel.
    assert share_in_fossa(plain) < 0.15
    assert 0.3 < share_in_fossa(balanced) < 0.7


def test_fossa_gain_brightens_the_posterior_fossa_only(bank: LesionBank) -> None:
    from ms_core.imaging.anatomy import load_template
    from ms_core.lesions.location import mni_zones

    tpl = load_template()
    with pytest.raises(ValueError, match="fossa_gain"):
        PatchSampler(bank, 32, fossa_gain=(1.2, 1.1))
    assert PatchSampler(bank, 32).fossa is None  # off: no draw, earlier recipes unchanged
    sampler = PatchSampler(bank, 32, fossa_gain=(1.4, 1.4))
    assert sampler.fossa is not None and sampler.fossa.shape == tpl.shape
    fossa = mni_zones().masks["infratentorial"]
    from scipy import ndimage as ndi

    far = ndi.distance_transform_edt(~fossa) > 9  # voxels more than 9 mm from the fossa
    assert sampler.fossa[fossa].mean() > 0.8 and sampler.fossa[far].max() < 0.05
    # The same patch drawn with and without the gain: brighter where it is posterior fossa.
    centre = _template_voxel((0.0, -55.0, -30.0))
    ratios = []
    for gain in ((1.0, 1.0), (1.4, 1.4)):
        s = PatchSampler(bank, 32, seed=4, lesion_fraction=0.0, fossa_gain=gain)
        s.brain_voxels = centre[None].astype(np.int16)  # every patch around the cerebellum
        if gain == (1.0, 1.0):
            s.fossa = sampler.fossa  # draws the same numbers as the gained sampler
            s.fossa_gain = gain
        ratios.append(s.sample()[0][0])
    inside = ratios[0] > 0.2
    assert float(np.median(ratios[1][inside] / ratios[0][inside])) == pytest.approx(1.4, abs=0.1)


def test_lesionwise_fraction_centres_small_lesions_as_often_as_large_ones() -> None:
    from ms_core.imaging.anatomy import load_template
    from training.seg.synth_data import _group_by_lesion

    tpl = load_template()
    c = np.array([s // 2 for s in tpl.shape])
    mask = np.zeros(tpl.shape, np.uint8)
    mask[c[0] + 40:c[0] + 42, c[1]:c[1] + 2, c[2]:c[2] + 2] = 1  # small: 8 voxels
    mask[c[0] - 48:c[0] - 40, c[1]:c[1] + 8, c[2]:c[2] + 8] = 1  # large: 512 voxels, 88 mm away
    voxels = np.argwhere(mask > 0).astype(np.int16)
    grouped, starts, sizes = _group_by_lesion(mask, voxels)
    assert sorted(sizes.tolist()) == [8, 512] and len(grouped) == 520
    for start, size in zip(starts, sizes, strict=True):  # each run is one whole lesion
        run = grouped[start:start + size]
        assert np.ptp(run[:, 0]) == (1 if size == 8 else 7)
    bank = LesionBank(mask[None], ("two",), (voxels,))

    def kinds(sampler: PatchSampler) -> list[str]:
        # The two lesions never share a 48^3 patch: a patch holds the small or the large one.
        sums = [float(sampler.sample()[1].sum()) for _ in range(12)]
        assert all(0 < v < 30 or v > 200 for v in sums), sums
        return ["small" if v < 30 else "large" for v in sums]

    lesionwise = kinds(PatchSampler(bank, 48, seed=2, lesion_fraction=1.0,
                                    lesionwise_fraction=1.0))
    assert 3 <= lesionwise.count("small") <= 9, lesionwise  # about half: one lesion of two
    plain = PatchSampler(bank, 48, seed=2, lesion_fraction=1.0)
    assert plain.lesionwise == []
    assert kinds(plain).count("small") <= 1  # 8 of 520 voxels: about 1.5 % of patches
    with pytest.raises(ValueError, match="lesionwise_fraction"):
        PatchSampler(bank, 48, lesionwise_fraction=-0.1)


def test_horn_caps_lie_only_at_the_front_and_back_of_the_ventricles() -> None:
    from ms_core.imaging.anatomy import load_template

    tpl = load_template()
    c = [s // 2 for s in tpl.shape]
    mask = np.zeros(tpl.shape, np.uint8)
    mask[c[0] + 20:c[0] + 26, c[1]:c[1] + 6, c[2] + 10:c[2] + 16] = 1
    bank = LesionBank(mask[None], ("one",), (np.argwhere(mask > 0).astype(np.int16),))
    ring = PatchSampler(bank, 48, seed=4, hard_negatives=True)
    horns = PatchSampler(bank, 48, seed=4, hard_negatives=True, caps="horns")
    assert ring.horn_zone is None and horns.horn_zone is not None
    vent = tpl.ventricles > 0.5
    zone = horns.horn_zone > 0.5
    y_vox = np.argwhere(vent)[:, 1]  # the template grid is RAS: voxel y runs with MNI y
    front, back, middle = y_vox.max(), y_vox.min(), (y_vox.max() + y_vox.min()) // 2
    assert zone[:, front, :].all() and zone[:, back, :].all() and not zone[:, middle, :].any()
    assert 0.2 < zone[vent].mean() < 0.6  # the horns, not the bodies
    differ = 0
    for _ in range(8):  # the same draws: same labels, images differ only where caps were cut
        (x_ring, y_ring), (x_horns, y_horns) = ring.sample(), horns.sample()
        np.testing.assert_array_equal(y_ring, y_horns)
        differ += int(not np.array_equal(x_ring, x_horns))
    assert 0 < differ < 8
    with pytest.raises(ValueError, match="caps"):
        PatchSampler(bank, 48, caps="everywhere")


def _pair_of_patients() -> LesionBank:
    """Two patients' masks: a block near the centre and one beside it."""
    from ms_core.imaging.anatomy import load_template

    shape = load_template().shape
    c = [s // 2 for s in shape]
    masks = np.zeros((2, *shape), np.uint8)
    masks[0, c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] + 10:c[2] + 16] = 1
    masks[1, c[0] - 4:c[0] + 4, c[1] + 6:c[1] + 12, c[2] + 10:c[2] + 16] = 1
    return LesionBank(masks, ("a", "b"), tuple(np.argwhere(m > 0).astype(np.int16)
                                                for m in masks))


def test_healthy_patches_have_no_lesion_and_the_share_is_kept(bank: LesionBank) -> None:
    sampler = PatchSampler(bank, 32, seed=5, lesion_fraction=1.0, healthy_fraction=0.5)
    empty = [float(sampler.sample()[1].sum()) == 0.0 for _ in range(30)]
    assert 5 <= sum(empty) <= 25  # about half
    always = PatchSampler(bank, 32, seed=5, lesion_fraction=1.0, healthy_fraction=1.0)
    assert all(float(always.sample()[1].sum()) == 0.0 for _ in range(5))


def test_confluent_patches_unite_two_masks_and_grow_them() -> None:
    bank2 = _pair_of_patients()
    plain = PatchSampler(bank2, 48, seed=2, lesion_fraction=1.0)
    merged = PatchSampler(bank2, 48, seed=2, lesion_fraction=1.0, confluent_fraction=1.0)
    plain_vox = np.mean([plain.sample()[1].sum() for _ in range(8)])
    merged_vox = np.mean([merged.sample()[1].sum() for _ in range(8)])
    assert merged_vox > 1.5 * plain_vox


def test_small_lesions_add_components_of_3_to_30_mm3(bank: LesionBank) -> None:
    from ms_core.lesions.components import label_components

    sampler = PatchSampler(bank, 48, seed=4, lesion_fraction=0.0, small_fraction=1.0)
    sizes: list[int] = []
    for _ in range(6):
        lab = label_components(sampler.sample()[1][0] > 0.5, affine=np.eye(4))
        sizes += [int((lab == i).sum()) for i in range(1, int(lab.max()) + 1)]
    assert len(sizes) >= 6
    assert min(sizes) >= 1 and np.median(sizes) <= 40


def test_white_matter_normalisation_puts_white_matter_near_one(bank: LesionBank) -> None:
    sampler = PatchSampler(bank, 48, seed=8, lesion_fraction=0.0, normalisation="wm",
                           gm_contrast=(1.5, 1.6), t1_dropout=1.0)
    levels = []
    for _ in range(6):
        x, _ = sampler.sample()
        flair = x[0]
        inside = flair > 0
        levels.append(float(np.median(flair[inside])))
        assert not x[1].any()  # t1_dropout=1: no T1w channel
    # Bright cortex (1.5-1.6 x white matter) pulls the median above 1, not white matter's level.
    assert 0.9 < float(np.median(levels)) < 1.5


def test_new_options_are_checked(bank: LesionBank) -> None:
    for kwargs, match in (({"gm_contrast": (1.6, 1.2)}, "gm_contrast"),
                          ({"gm_field": 0.9}, "gm_field"),
                          ({"healthy_fraction": 1.5}, "healthy_fraction"),
                          ({"normalisation": "zscore"}, "normalisation"),
                          ({"t1_dropout": -0.1}, "t1_dropout")):
        with pytest.raises(ValueError, match=match):
            PatchSampler(bank, 32, **kwargs)  # type: ignore[arg-type]


def test_new_options_off_leave_the_patches_bit_identical(bank: LesionBank) -> None:
    old = PatchSampler(bank, 32, seed=9, hard_negatives=True, noise="mixed")
    new = PatchSampler(bank, 32, seed=9, hard_negatives=True, noise="mixed", gm_field=0.0,
                       healthy_fraction=0.0, confluent_fraction=0.0, small_fraction=0.0,
                       ghosting=0.0, normalisation="median", t1_dropout=0.5)
    for _ in range(3):
        (xa, ya), (xb, yb) = old.sample(), new.sample()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
