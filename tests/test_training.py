"""Training-side code (torch; skipped where torch is not installed, as in the app's CI venv)."""

from __future__ import annotations

from pathlib import Path

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


def test_architecture_is_read_back_from_the_state_dict() -> None:
    from training.seg.model import architecture_of

    for norm in ("instance", "batch"):
        net = UNet3D(2, (4, 8, 16), norm=norm)
        state = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        assert architecture_of(state) == ((4, 8, 16), norm)
    with pytest.raises(ValueError, match="UNet3D"):
        architecture_of({"head.weight": (1, 4, 1, 1, 1)})
    with pytest.raises(ValueError, match="normalisation"):
        UNet3D(2, (4, 8), norm="group")


def _far_change(norm: str) -> float:
    """Largest output change in one corner when the opposite corner of the input changes."""
    torch.manual_seed(0)
    net = UNet3D(2, (4, 8), norm=norm)
    net.train()
    with torch.no_grad():  # non-trivial running statistics for batch norm
        net(torch.randn(2, 2, 24, 24, 24) * 2 + 1)
    net.eval()
    x = torch.randn(1, 2, 40, 40, 40)
    y = x.clone()
    y[:, :, :6, :6, :6] += 5.0  # a bright blob far from the corner we read
    with torch.no_grad():
        a, b = net(x)[..., 30:, 30:, 30:], net(y)[..., 30:, 30:, 30:]
    return float((a - b).abs().max())


def test_batch_norm_output_does_not_depend_on_what_else_the_window_holds() -> None:
    # Instance norm: the window's statistics move every output voxel (the sliding-window
    # placement effect); batch norm at inference is a plain convolution.
    assert _far_change("instance") > 1e-3
    assert _far_change("batch") == 0.0


def test_batch_norm_calibration_uses_the_plain_average_of_the_patches() -> None:
    from training.seg.train import calibrate_batch_norm

    torch.manual_seed(1)
    patches = [np.random.default_rng(i).normal(i, 1.0 + i, (2, 16, 16, 16)).astype(np.float32)
               for i in range(4)]

    class Sampler:
        i = 0

        def sample(self) -> tuple[np.ndarray, np.ndarray]:
            self.i += 1
            return patches[self.i - 1], np.zeros((1, 16, 16, 16), np.float32)

    net = UNet3D(2, (4, 8), norm="batch")
    calibrate_batch_norm(net, Sampler(), patches=4, batch=2)  # type: ignore[arg-type]
    assert not net.training
    conv, bn = net.enc[0].net[0], net.enc[0].net[1]
    with torch.no_grad():
        feats = conv(torch.from_numpy(np.stack(patches)))
    expected = feats.mean(dim=(0, 2, 3, 4)).numpy()
    np.testing.assert_allclose(bn.running_mean.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1


def test_blob_loss_weighs_each_lesion_alike() -> None:
    from training.seg.train import blob_loss, lesion_components, soft_dice_loss

    target = np.zeros((1, 1, 16, 16, 16), np.float32)
    target[0, 0, 2:10, 2:10, 2:10] = 1.0  # 512 voxels
    target[0, 0, 13:15, 13:15, 13] = 1.0  # 4 voxels, its own component
    comps = lesion_components(target)
    assert int(comps.max()) == 2
    sure = torch.from_numpy(np.where(target > 0, 12.0, -12.0).astype(np.float32))
    assert float(blob_loss(sure, comps)) < 0.01
    miss_small = sure.clone()
    miss_small[0, 0, 13:15, 13:15, 13] = -12.0
    miss_big_edge = sure.clone()  # the big lesion loses 4 voxels: same count as the small one
    miss_big_edge[0, 0, 2, 2, 2:6] = -12.0
    # Whole-batch Dice hardly tells the two errors apart; the blob loss sees a lost lesion.
    assert abs(float(soft_dice_loss(miss_small, torch.from_numpy(target)))
               - float(soft_dice_loss(miss_big_edge, torch.from_numpy(target)))) < 1e-3
    assert float(blob_loss(miss_small, comps)) > 0.35
    assert float(blob_loss(miss_big_edge, comps)) < 0.01
    # The other lesion is masked out of each lesion's term: a false positive still counts.
    false_pos = sure.clone()
    false_pos[0, 0, 12, 2:6, 2:6] = 12.0
    assert float(blob_loss(false_pos, comps)) > float(blob_loss(sure, comps)) + 0.1
    empty = torch.zeros((1, 1, 16, 16, 16))
    assert float(blob_loss(empty, lesion_components(np.zeros((1, 1, 16, 16, 16))))) == 0.0


def test_tversky_loss_is_dice_at_half_and_weighs_misses_above() -> None:
    from training.seg.train import soft_dice_loss, tversky_loss

    torch.manual_seed(2)
    target = (torch.rand(1, 1, 8, 8, 8) > 0.7).float()
    logits = torch.randn(1, 1, 8, 8, 8)
    assert float(tversky_loss(logits, target, 0.5)) == pytest.approx(
        float(soft_dice_loss(logits, target)), abs=1e-6)
    # An under-segmenting prediction (misses half the lesion) against an over-segmenting one
    # with the same number of wrong voxels: beta > 0.5 punishes the misses more.
    lesion = torch.zeros(1, 1, 8, 8, 8)
    lesion[..., 2:6, 2:6, 2:6] = 1.0
    under = torch.where(lesion.bool(), 10.0, -10.0)
    under[..., 2:6, 2:6, 2:4] = -10.0  # 32 missed voxels
    over = torch.where(lesion.bool(), 10.0, -10.0)
    over[..., 0:2, 0:4, 0:4] = 10.0  # 32 extra voxels
    assert float(tversky_loss(under, lesion, 0.7)) > float(tversky_loss(over, lesion, 0.7))
    assert float(tversky_loss(under, lesion, 0.3)) < float(tversky_loss(over, lesion, 0.3))


def test_export_records_the_whole_fine_tuning_chain(tmp_path: Path) -> None:
    from ms_core.foundation.io import write_json
    from training.seg.export import _initialised_from

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    write_json(first / "config.json", {"command": "train --out a", "init": None})
    write_json(second / "config.json", {"command": "train --out b --init a/w.npz",
                                        "init": str(first / "w.npz"), "init_sha256": "aa"})
    third = {"command": "train --out c --init b/w.npz", "init": str(second / "w.npz"),
             "init_sha256": "bb"}
    assert _initialised_from({"command": "train --out a", "init": None}) is None
    info = _initialised_from(third)
    assert info == {"weights": str(second / "w.npz"), "weights_sha256": "bb",
                    "commands_before": ["train --out a", "train --out b --init a/w.npz"]}


def test_export_follows_the_chain_through_a_shipped_model_card(tmp_path: Path) -> None:
    from ms_core.foundation.io import write_json
    from training.seg.export import _initialised_from

    shipped = tmp_path / "lesion_seg"
    shipped.mkdir()
    write_json(shipped / "model.json", {"training": {
        "command": "train --out v11 --init v4/w.npz",
        "initialised_from": {"commands_before": ["train --out v3", "train --out v4"]}}})
    run = {"command": "train --out v22", "init": str(shipped / "weights.npz"),
           "init_sha256": "cc"}
    assert _initialised_from(run) == {
        "weights": str(shipped / "weights.npz"), "weights_sha256": "cc",
        "commands_before": ["train --out v3", "train --out v4", "train --out v11 --init v4/w.npz"]}


def test_export_records_every_data_and_loss_option() -> None:
    from training.seg.export import _recorded_options

    old_run = {"command": "train --out a", "seed": 1}  # before any of the options existed
    assert _recorded_options(old_run) == {"noise": "white", "lesion_model": "uniform",
                                          "winsorise": 0.0, "tversky_beta": 0.5,
                                          "blob_weight": 0.0, "lesion_gm_floor": 0.0,
                                          "contrast_power": 1.0, "focus_fraction": 0.0,
                                          "lesionwise_fraction": 0.0, "caps": "ring",
                                          "gm_contrast": "1.02,1.45", "gm_field": 0.0,
                                          "healthy_fraction": 0.0, "confluent_fraction": 0.0,
                                          "small_fraction": 0.0, "ghosting": 0.0,
                                          "normalisation": "median", "t1_dropout": 0.5,
                                          "fossa_gain": "1.0,1.0", "focus_balanced": False}
    new_run = {"noise": "mixed", "lesion_model": "varied", "winsorise": 0.5, "tversky_beta": 0.7,
               "blob_weight": 1.0, "lesion_gm_floor": 1.05, "contrast_power": 2.0,
               "focus_fraction": 0.5, "lesionwise_fraction": 0.5, "caps": "horns",
               "gm_contrast": "0.95,1.6", "gm_field": 0.15, "healthy_fraction": 0.15,
               "confluent_fraction": 0.2, "small_fraction": 0.3, "ghosting": 0.15,
               "normalisation": "wm", "t1_dropout": 1.0, "fossa_gain": "0.95,1.35",
               "focus_balanced": True}
    assert _recorded_options(new_run) == new_run


def test_soup_averages_float_weights_and_rejects_another_network(tmp_path: Path) -> None:
    from training.seg.soup import average_weights
    from training.seg.train import save_weights

    torch.manual_seed(0)
    nets = [UNet3D(2, (4, 8), norm="batch") for _ in range(3)]
    paths = []
    for i, net in enumerate(nets):
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.num_batches_tracked.fill_(10 * (i + 1))
        paths.append(tmp_path / f"w{i}.npz")
        save_weights(net, paths[-1])
    soup = average_weights(paths)
    states = [net.state_dict() for net in nets]
    assert set(soup) == set(states[0])
    for k, v in soup.items():
        if states[0][k].is_floating_point():
            want = np.mean([s[k].numpy() for s in states], axis=0)
            np.testing.assert_allclose(v, want, rtol=1e-6, atol=1e-7)
            assert v.dtype == np.float32
        else:  # step counters are not averaged
            assert int(v) == 10
    other = tmp_path / "other.npz"
    save_weights(UNet3D(2, (4, 16), norm="batch"), other)
    with pytest.raises(ValueError, match=r"other\.npz"):
        average_weights([paths[0], other])


def test_recipe_sampler_rebuilds_a_runs_patches_from_its_config() -> None:
    from ms_core.imaging.anatomy import load_template
    from training.seg.synth_data import LesionBank, PatchSampler
    from training.seg.train import recipe_sampler

    shape = load_template().shape
    mask = np.zeros(shape, np.uint8)
    c = [s // 2 for s in shape]
    mask[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] + 10:c[2] + 16] = 1
    bank = LesionBank(mask[None], ("synthetic",), (np.argwhere(mask > 0).astype(np.int16),))
    new = {"patch": 32, "lesion_fraction": 0.5, "hard_negatives": True,
           "lesion_contrast": "1.15,1.9", "noise": "mixed", "lesion_model": "uniform",
           "winsorise": 0.0, "lesion_gm_floor": 1.05, "contrast_power": 1.0,
           "lesionwise_fraction": 0.5}
    direct = PatchSampler(bank, 32, seed=3, lesion_fraction=0.5, hard_negatives=True,
                          lesion_contrast=(1.15, 1.9), noise="mixed", lesion_gm_floor=1.05,
                          lesionwise_fraction=0.5)
    old = {k: new[k] for k in ("patch", "lesion_fraction", "hard_negatives", "lesion_contrast")}
    old_direct = PatchSampler(bank, 32, seed=3, lesion_fraction=0.5, hard_negatives=True,
                              lesion_contrast=(1.15, 1.9))  # an old run: defaults elsewhere
    for config, ref in ((new, direct), (old, old_direct)):
        got = recipe_sampler(config, bank, seed=3)
        for _ in range(2):
            (x, y), (xr, yr) = got.sample(), ref.sample()
            np.testing.assert_array_equal(x, xr)
            np.testing.assert_array_equal(y, yr)
    x_new = recipe_sampler(new, bank, 3).sample()[0]
    x_old = recipe_sampler(old, bank, 3).sample()[0]
    assert not np.array_equal(x_new, x_old)  # the recorded options do change the patches


class _WindowSpy:
    """A stand-in for :class:`ms_core.segmentation.inference.OnnxModel` that keeps every window it
    is fed."""

    provider = "CPUExecutionProvider"

    def __init__(self, patch: int) -> None:
        import dataclasses

        from ms_core.segmentation.model_store import load_segmentation_card

        self.card = dataclasses.replace(load_segmentation_card(), patch_size=(patch,) * 3,
                                        multiple_of=8, name="spy", version="0",
                                        sha256="0" * 64, uses_t1=True,
                                        intensity_reference="brain_median")
        self.windows: list[np.ndarray] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.windows.append(batch[0].copy())
        return np.zeros((1, 1, *batch.shape[2:]), dtype=np.float32)


def test_adaptation_sees_exactly_the_windows_inference_feeds_the_network(tmp_path: Path) -> None:
    import nibabel as nib

    from ms_core.foundation.io import load_volume
    from ms_core.segmentation.segment import SegmentParams, segment_volumes
    from training.seg.adapt_bn import inference_windows, scan_network_input

    rng = np.random.default_rng(0)
    grid = np.indices((30, 44, 26)).astype(float)
    head = ((grid[0] - 15) / 13) ** 2 + ((grid[1] - 22) / 19) ** 2 + ((grid[2] - 13) / 11) ** 2 < 1
    data = np.where(head, 100 + 20 * rng.random(head.shape), 0).astype(np.float32)
    affine = np.diag([1.2, 1.0, 1.5, 1.0])  # not the 1 mm working grid: resampling runs
    path = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    spy = _WindowSpy(16)
    segment_volumes(load_volume(path, "FLAIR"), None, SegmentParams(skull_stripped=True),
                    spy)  # type: ignore[arg-type]
    x = scan_network_input(path, skull_stripped=True, multiple_of=8, patch=16)
    assert x.shape[0] == 2 and not x[1].any()  # FLAIR alone: the T1w channel is zero
    windows = inference_windows(x, 16, SegmentParams().overlap)
    assert len(windows) == len(spy.windows) > 4 * 8  # more than 8 windows, 4 flips each
    for mine, fed in zip(windows, spy.windows, strict=True):
        np.testing.assert_array_equal(mine, fed)


def test_mixed_batches_draw_each_real_window_before_repeating_one() -> None:
    from training.seg.adapt_bn import mixed_batches

    real = [np.full((2, 4, 4, 4), i, np.float32) for i in range(5)]

    class Synthetic:
        calls = 0

        def sample(self) -> tuple[np.ndarray, np.ndarray]:
            self.calls += 1
            return np.full((2, 4, 4, 4), -1.0, np.float32), np.zeros((1, 4, 4, 4), np.float32)

    got = list(mixed_batches(real, None, batches=5, batch=2, real_fraction=1.0, seed=0))
    ids = [int(b[i, 0, 0, 0, 0]) for b in got for i in range(2)]
    assert [b.shape for b in got] == [(2, 2, 4, 4, 4)] * 5
    assert sorted(ids[:5]) == [0, 1, 2, 3, 4] and sorted(ids[5:]) == [0, 1, 2, 3, 4]
    syn = Synthetic()
    half = list(mixed_batches(real, syn, batches=200, batch=2,  # type: ignore[arg-type]
                              real_fraction=0.5, seed=0))
    share = np.mean([b[i, 0, 0, 0, 0] >= 0 for b in half for i in range(2)])
    assert 0.4 < share < 0.6 and syn.calls == 400 - round(share * 400)
    none = list(mixed_batches([], syn, batches=3, batch=2,  # type: ignore[arg-type]
                              real_fraction=0.0, seed=0))
    assert all((b == -1).all() for b in none)
    with pytest.raises(ValueError, match="needs real windows"):
        next(mixed_batches([], syn, batches=1, batch=2, real_fraction=0.5,  # type: ignore[arg-type]
                           seed=0))
    with pytest.raises(ValueError, match="synthetic sampler"):
        next(mixed_batches(real, None, batches=1, batch=2, real_fraction=0.5, seed=0))


def test_calibration_needs_a_batch_norm_network() -> None:
    from training.seg.train import calibrate_on_batches

    with pytest.raises(ValueError, match="no batch-norm layer"):
        calibrate_on_batches(UNet3D(2, (4, 8), norm="instance"),
                             iter([np.zeros((2, 2, 16, 16, 16), np.float32)]))


def test_adapt_bn_refuses_the_held_out_patient26(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from training.seg.adapt_bn import main

    scan = tmp_path / "patient26" / "FLAIR.nii.gz"
    scan.parent.mkdir()
    for p in (scan, tmp_path / "w.npz", tmp_path / "config.json"):
        p.write_bytes(b"x")
    with pytest.raises(SystemExit):
        main(["--weights", str(tmp_path / "w.npz"), "--config", str(tmp_path / "config.json"),
              "--real", str(scan), "--out", str(tmp_path / "out")])
    assert "held-out" in capsys.readouterr().err
    common = ["--weights", str(tmp_path / "w.npz"), "--config", str(tmp_path / "config.json"),
              "--out", str(tmp_path / "out")]
    for extra, why in ((["--real-fraction", "0.5"], "needs --real scans"),
                       (["--real-fraction", "0"], "give the number of --batches"),
                       (["--real-fraction", "1.5", "--real", str(scan)], "between 0 and 1")):
        with pytest.raises(SystemExit):
            main(common + extra)
        assert why in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_runs_recipe_is_read_back_from_its_training_command() -> None:
    import json

    from ms_core.segmentation.model_store import MODELS_DIR
    from training.seg.train import recipe_from_card, recipe_from_command

    r = recipe_from_command("python -m training.seg.train --out training/runs/x --steps 1200 "
                            "--seed 11 --hard-negatives --lesion-fraction 0.5 --norm batch "
                            "--lesion-contrast 1.15,1.9 --noise mixed --caps horns")
    assert (r["seed"], r["steps"], r["hard_negatives"]) == (11, 1200, True)
    assert r["lesion_fraction"] == 0.5
    assert (r["lesion_contrast"], r["noise"], r["caps"], r["norm"]) == ("1.15,1.9", "mixed",
                                                                         "horns", "batch")
    # options the command leaves out take this code's defaults
    assert (r["widths"], r["patch"], r["batch"], r["lesion_model"]) == ([12, 24, 48, 96], 64, 2,
                                                                        "uniform")
    with pytest.raises(ValueError, match="not a training command"):
        recipe_from_command("python -m training.seg.soup --out x a.npz b.npz")
    with pytest.raises(ValueError, match="cannot read"):
        recipe_from_command("python -m training.seg.train --steps 5")  # --out is required
    card = json.loads((MODELS_DIR / "lesion_seg" / "model.json").read_text())
    shipped = recipe_from_card(card)
    assert shipped["norm"] == "batch" and shipped["widths"] == [12, 24, 48, 96]
    assert card["architecture"].startswith("3D U-Net, widths [12, 24, 48, 96], batch norm")
    # A card whose last step was not a training run (adapt_bn, a soup): its recipe is the
    # last training command its weights came from.
    train = "python -m training.seg.train --out a --seed 3 --normalisation wm"
    adapted = {"training": {"command": "python -m training.seg.adapt_bn --weights w.npz",
                            "initialised_from": {"commands_before": [
                                "python -m training.seg.train --out b --seed 2", train]}}}
    assert recipe_from_card(adapted)["command"] == train
    assert recipe_from_card(adapted)["normalisation"] == "wm"
    with pytest.raises(ValueError, match="names no training"):
        recipe_from_card({"training": {"command": "python -m training.seg.soup --out x"}})


def test_brain_patches_are_centred_near_brain_voxels_like_training_patches() -> None:
    from training.seg.adapt_bn import brain_patches

    x = np.zeros((2, 40, 40, 40), np.float32)
    x[0, 5:10, 30:35, 0:5] = 1.0  # a small "brain" at the edge of the image
    patches = brain_patches(x, 16, 50, seed=3)
    assert len(patches) == 50 and all(p.shape == (2, 16, 16, 16) for p in patches)
    # a brain voxel lies within a quarter patch (+ rounding) of each patch's centre
    assert all(p[0, 3:13, 3:13, 3:13].any() for p in patches)
    assert not any(p[1].any() for p in patches)
    again = brain_patches(x, 16, 50, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(patches, again, strict=True))
    with pytest.raises(ValueError, match="no brain voxel"):
        brain_patches(np.zeros_like(x), 16, 1, seed=0)


def test_a_derived_run_records_its_command_and_metrics(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from training.seg.train import write_derived_run

    write_derived_run(tmp_path, {"widths": [4, 8], "out": str(tmp_path)}, {"dice": 0.5},
                      "training.seg.soup", ["--out", "x", "a.npz", "b.npz"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["command"] == "python -m training.seg.soup --out x a.npz b.npz"
    assert config["widths"] == [4, 8] and config["torch"] == torch.__version__
    assert "git_commit" in config
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"dice": 0.5}
    assert "0.5" in capsys.readouterr().out


def test_temperature_scaling_finds_the_temperature_that_made_the_labels() -> None:
    from training.seg.calibrate import fit_temperature

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200_000, generator=gen) * 4.0
    # Labels drawn from sigmoid(logits / 2): the network is twice too confident.
    target = (torch.rand(logits.shape, generator=gen) < torch.sigmoid(logits / 2.0)).float()
    assert fit_temperature(logits, target) == pytest.approx(2.0, rel=0.05)
    calibrated = (torch.rand(logits.shape, generator=gen) < torch.sigmoid(logits)).float()
    assert fit_temperature(logits, calibrated) == pytest.approx(1.0, rel=0.05)


def test_platt_scaling_finds_the_scale_and_shift_that_made_the_labels() -> None:
    from training.seg.calibrate import fit_platt

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(200_000, generator=gen) * 3.0
    # Labels drawn from sigmoid(0.5 z - 1): too confident and too ready to call lesion.
    target = (torch.rand(logits.shape, generator=gen) < torch.sigmoid(0.5 * logits - 1.0)).float()
    scale, shift = fit_platt(logits, target)
    assert scale == pytest.approx(0.5, abs=0.03) and shift == pytest.approx(-1.0, abs=0.05)


def test_change_network_trains_exports_and_runs_in_the_track_pipeline(tmp_path: Path) -> None:
    """A few steps of training.change on real lesion masks, the ONNX export (parity-checked,
    card, manifest, sha256) and the exported model's probabilities through ms_core."""
    from ms_core.foundation.io import sha256_file
    from ms_core.segmentation.inference import load_onnx_model
    from ms_core.segmentation.model_store import load_model_card, verify_model
    from training.change import export, train
    from training.seg.train import DEFAULT_MNI

    if not DEFAULT_MNI.is_dir():
        pytest.skip("../shared/data/open_ms_data is not here")
    run = tmp_path / "run"
    assert train.main(["--out", str(run), "--steps", "4", "--batch", "2", "--patch", "16",
                       "--widths", "4,8", "--val-every", "2", "--val-pairs", "2",
                       "--bn-calibration", "4", "--seed", "3"]) == 0
    log = [line for line in (run / "train_log.jsonl").read_text().splitlines() if line]
    assert len(log) == 4 and (run / "weights_best.npz").exists()
    models = tmp_path / "models"
    assert export.main(["--run", str(run), "--models-dir", str(models),
                        "--version", "0.0.1"]) == 0
    verified = verify_model("lesion_change", models)  # sha256 in manifest and card agree
    card = load_model_card("lesion_change", models)
    assert card.channels[0].startswith("FLAIR follow-up") and len(card.channels) == 3
    assert card.intensity_reference == "white_matter"
    assert verified.card["training"]["command"].startswith("python -m training.change.train")
    markdown = (models / "lesion_change" / "MODEL_CARD.md").read_text()
    assert markdown.startswith("# Model card: lesion_change 0.0.1")
    assert "| patient12 (real pair) lesion F1 of change | not measured |" in markdown
    model = load_onnx_model(card, "cpu")
    x = np.random.default_rng(0).uniform(0.5, 1.5, (1, 3, 16, 16, 16)).astype(np.float32)
    p = model.predict(x)
    assert p.shape == (1, 2, 16, 16, 16) and ((p >= 0) & (p <= 1)).all()
    assert "initialised_from" not in card.raw["training"]

    # A run continued from those weights starts from them (at a vanishing learning rate its
    # convolutions end where the first run's did, not at the seed's random start) and its
    # card says where it started.
    again = tmp_path / "again"
    weights = run / "weights_best.npz"
    assert train.main(["--out", str(again), "--steps", "2", "--batch", "2", "--patch", "16",
                       "--widths", "4,8", "--val-every", "2", "--val-pairs", "2",
                       "--bn-calibration", "0", "--seed", "4", "--lr", "1e-12",
                       "--init", str(weights)]) == 0
    with np.load(weights) as a, np.load(again / "weights_last.npz") as b:
        convs = [k for k in a.files if a[k].ndim == 5]
        assert convs and all(np.allclose(a[k], b[k], atol=1e-6) for k in convs)
    assert export.main(["--run", str(again), "--models-dir", str(models),
                        "--version", "0.0.2"]) == 0
    start = load_model_card("lesion_change", models).raw["training"]["initialised_from"]
    assert start == {"weights": str(weights), "weights_sha256": sha256_file(weights)}
    with pytest.raises(SystemExit, match="cannot load these weights"):
        train.main(["--out", str(tmp_path / "bad"), "--steps", "1", "--widths", "4,8,16",
                    "--patch", "16", "--init", str(weights)])


def test_change_loss_falls_when_the_network_learns_a_fixed_batch() -> None:
    from training.change.train import change_loss

    torch.manual_seed(0)
    net = UNet3D(3, (4, 8), norm="batch", out_channels=2)
    x = torch.randn(2, 3, 16, 16, 16)
    y = torch.zeros(2, 2, 16, 16, 16)
    y[:, 0, 4:8, 4:8, 4:8] = 1.0
    y[:, 1, 10:13, 10:13, 10:13] = 1.0
    x[:, 2] += 2.0 * (y[:, 0] - y[:, 1])  # the difference channel shows both changes
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = change_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_change_loss_channel_weights_weigh_each_channel() -> None:
    import torch.nn.functional as F

    from training.change.train import change_loss
    from training.seg.train import soft_dice_loss

    torch.manual_seed(1)
    logits = torch.randn(2, 2, 8, 8, 8)
    y = (torch.rand(2, 2, 8, 8, 8) > 0.8).float()
    per_channel = [F.binary_cross_entropy_with_logits(logits[:, c], y[:, c])
                   + soft_dice_loss(logits[:, c], y[:, c]) for c in range(2)]
    equal = change_loss(logits, y)
    assert torch.isclose(equal, change_loss(logits, y, (2.0, 2.0)))
    assert torch.isclose(equal, (per_channel[0] + per_channel[1]) / 2, atol=1e-6)
    heavy = change_loss(logits, y, (1.0, 3.0))
    assert torch.isclose(heavy, (per_channel[0] + 3 * per_channel[1]) / 4, atol=1e-6)
