"""Meta's reference checkpoints (emgscale.models.reference): same emissions, same function, exact round trips.

Ground truth: ``../shared/reference-checkpoints/`` (its README): Lightning checkpoints written by the
official emg2qwerty code, the session they were evaluated on and the reference's own whole-session
emissions. Tests needing those files skip when the folder is absent.

Tolerance of emissions: float32 rounding. The reference's float32 emissions lie ~3e-4 (max abs, in
log-prob) from a float64 evaluation of the same function on these fixtures, emgscale's float32 ones ~5e-5,
so the two float32 implementations agree to a few 1e-4; 1e-3 leaves room for other BLAS kernels while a
wrong layout, norm or spectrogram moves them by > 0.1.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emgscale.config import from_dict, shipped_configs, to_dict
from emgscale.models import ModelConfig, build_model
from emgscale.models.__main__ import main as models_main
from emgscale.models.reference import (export_reference, import_reference, is_reference_checkpoint, read_reference,
                                       reference_as_checkpoint, reference_lightning_checkpoint)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "reference-checkpoints"
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "session.hdf5").is_file(),
                                    reason=f"reference checkpoints not found at {FIXTURES}")
CHECKPOINTS = {"tds_small_step24": "tds_small_step24.ckpt", "tds_default_step12": "tds_default_step12_noopt.ckpt"}
EMISSION_ATOL = 1e-3  # float32 rounding; see the module docstring
SMALL = {"frontend": {"mlp_features": [48]}, "tds": {"block_channels": [24, 32], "kernel_width": 8}}


# --- the reference's function, written from its module structure (time-first, channel-major) -------

def reference_log_spectrogram(emg: torch.Tensor, n_fft: int = 64, hop: int = 16) -> torch.Tensor:
    """(T, 2, 16) -> (T', 2, 16, n_fft // 2 + 1): torchaudio ``Spectrogram(normalized=True, center=False)``, log10(. + 1e-6)."""
    win = torch.hann_window(n_fft, dtype=emg.dtype)
    spec = torch.stft(emg.permute(1, 2, 0).reshape(-1, emg.shape[0]), n_fft, hop, window=win, center=False,
                      return_complex=True)
    power = spec.abs().pow(2) / win.pow(2).sum()
    return torch.log10(power + 1e-6).reshape(2, 16, n_fft // 2 + 1, -1).permute(3, 0, 1, 2)


def reference_forward(sd: dict[str, torch.Tensor], hp: dict, feats: torch.Tensor) -> torch.Tensor:
    """``TDSConvCTCModule.forward`` in eval mode from its state_dict: (T, N, 2, 16, K) -> (T', N, 99)."""
    T, N, bands, C, K = feats.shape
    x = feats.movedim(0, -1).reshape(N, bands * C, K, T)
    bn = "model.0.batch_norm."
    x = F.batch_norm(x, sd[bn + "running_mean"], sd[bn + "running_var"], sd[bn + "weight"], sd[bn + "bias"],
                     False, 0.0, 1e-5).reshape(N, bands, C, K, T).movedim(-1, 0)
    outs = []
    for b in range(bands):
        h = torch.stack([x[:, :, b].roll(o, dims=2) for o in (-1, 0, 1)], 2).flatten(3)
        for j in range(len(hp["mlp_features"])):
            h = torch.relu(F.linear(h, sd[f"model.1.mlps.{b}.mlp.{2 * j}.weight"], sd[f"model.1.mlps.{b}.mlp.{2 * j}.bias"]))
        outs.append(h.mean(2))
    h = torch.stack(outs, 2).flatten(2)  # (T, N, bands * D)
    nf = h.shape[-1]
    for i, c in enumerate(hp["block_channels"]):
        p = f"model.3.tds_conv_blocks.{2 * i}."
        z = h.movedim(0, -1).reshape(N, c, nf // c, h.shape[0])
        z = torch.relu(F.conv2d(z, sd[p + "conv2d.weight"], sd[p + "conv2d.bias"])).reshape(N, nf, -1).movedim(-1, 0)
        h = F.layer_norm(z + h[-z.shape[0]:], (nf,), sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"])
        p = f"model.3.tds_conv_blocks.{2 * i + 1}."
        z = F.linear(torch.relu(F.linear(h, sd[p + "fc_block.0.weight"], sd[p + "fc_block.0.bias"])),
                     sd[p + "fc_block.2.weight"], sd[p + "fc_block.2.bias"])
        h = F.layer_norm(z + h, (nf,), sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"])
    return F.linear(h, sd["model.4.weight"], sd["model.4.bias"]).log_softmax(-1)


def random_tds(seed: int = 0, **over: dict) -> torch.nn.Module:
    """A small TDS (two blocks of different channels) with every weight and BN statistic randomised."""
    torch.manual_seed(seed)
    model = build_model(from_dict(ModelConfig, {**SMALL, **over})).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else torch.randn_like(t) * 0.3)
    return model


def session_emg() -> np.ndarray:
    from emgscale.data.session import EMGSession

    with EMGSession(FIXTURES / "session.hdf5") as s:
        return np.ascontiguousarray(s.emg())


def _plain_copy(path: Path, out: Path, edit=None) -> Path:
    """Re-save a fixture with plain hyper_parameters (after ``edit(ckpt)``), as a damaged-file base."""
    from emgscale.models.reference import _load, _plain

    ck = _load(path)
    ck["hyper_parameters"] = _plain(ck["hyper_parameters"])
    if edit:
        edit(ck)
    torch.save(ck, out)
    return out


# --- emissions and function ---------------------------------------------------------------------

@needs_fixtures
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_imported_checkpoint_reproduces_reference_emissions(name: str) -> None:
    """Whole-session inference of an imported checkpoint equals the reference's own emissions (float32 rounding)."""
    from emgscale.data.session import EMGSession
    from emgscale.eval import infer_session

    model = import_reference(FIXTURES / CHECKPOINTS[name])
    with torch.no_grad():
        ours = infer_session(model, EMGSession(FIXTURES / "session.hdf5"), chunk_seconds=0)
    theirs = np.load(FIXTURES / f"{name}.emissions.npy")
    assert ours.shape == theirs.shape
    diff = float(np.abs(ours - theirs).max())
    print(f"{name}: max |log-prob difference| {diff:.3g}")
    assert diff < EMISSION_ATOL


@needs_fixtures
def test_test_reference_function_reproduces_reference_emissions() -> None:
    """This file's reference_forward (used below) reproduces the reference's emissions from its checkpoint."""
    from emgscale.models.reference import _load, _plain

    ck = _load(FIXTURES / CHECKPOINTS["tds_small_step24"])
    sd, hp = ck["state_dict"], _plain(ck["hyper_parameters"])
    with torch.no_grad():
        out = reference_forward(sd, hp, reference_log_spectrogram(torch.from_numpy(session_emg()))[:, None])[:, 0]
    assert float(np.abs(out.numpy() - np.load(FIXTURES / "tds_small_step24.emissions.npy")).max()) < EMISSION_ATOL


def test_whole_model_equals_reference_function() -> None:
    """EMG -> log-probs of an emgscale TDS equals the reference's function (float64) on its exported weights."""
    model = random_tds()
    sd = {k: v.double() for k, v in export_reference(model).items()}
    hp = reference_lightning_checkpoint(model)["hyper_parameters"]
    torch.manual_seed(1)
    emg = torch.randn(3000, 2, 16) * 20.0
    with torch.no_grad():
        ours, out_len = model(emg[None], torch.tensor([3000]))
        theirs = reference_forward(sd, hp, reference_log_spectrogram(emg.double())[:, None])[:, 0]
        assert ours.shape[1] == int(out_len[0]) == theirs.shape[0]
        assert float((ours[0].double() - theirs).abs().max()) < 1e-4  # float32 vs exact
        # The encoder's pre-reference feature order (same weights) is another function.
        other = build_model(from_dict(ModelConfig, {**SMALL, "tds": {**SMALL["tds"], "feature_order": "width_major"}}))
        other.load_state_dict(model.state_dict())
        assert float((other.eval()(emg[None], torch.tensor([3000]))[0][0].double() - theirs).abs().max()) > 0.1


# --- round trips ----------------------------------------------------------------------------------

def test_export_import_round_trip_is_exact(tmp_path: Path) -> None:
    """export -> Lightning file -> read_reference gives back every tensor bit for bit and the same model config."""
    model = random_tds(2)
    path = tmp_path / "exported.ckpt"
    torch.save(reference_lightning_checkpoint(model, epoch=3, global_step=70), path)
    assert is_reference_checkpoint(path)
    r = read_reference(path)
    want = model.state_dict()
    assert sorted(r.state_dict) == sorted(want)
    assert all(torch.equal(r.state_dict[k], want[k]) for k in want)
    assert to_dict(r.model_cfg) == to_dict(model.cfg) and (r.epoch, r.global_step) == (3, 70)
    ck = reference_as_checkpoint(path)
    assert ck["config"] == {"model": to_dict(model.cfg)} and ck["step"] == 70 and ck["source"] == f"reference:{path}"


@needs_fixtures
def test_reference_default_module_is_configs_models_tds() -> None:
    """The reference's default TDSConvCTCModule imports to exactly configs/models/tds.yaml's model (fine-tune with it)."""
    import yaml

    want = from_dict(ModelConfig, yaml.safe_load((shipped_configs() / "models" / "tds.yaml").read_text())["model"])
    assert to_dict(read_reference(FIXTURES / CHECKPOINTS["tds_default_step12"]).model_cfg) == to_dict(want)


@needs_fixtures
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_import_export_gives_back_the_reference_tensors(name: str) -> None:
    """import -> export reproduces the fixture's state_dict: same keys, shapes and values, bit for bit."""
    from emgscale.models.reference import _load

    ref = _load(FIXTURES / CHECKPOINTS[name])["state_dict"]
    out = export_reference(import_reference(FIXTURES / CHECKPOINTS[name]))
    assert sorted(out) == sorted(ref)
    assert all(out[k].shape == ref[k].shape and torch.equal(out[k], ref[k]) for k in ref)


def test_export_refuses_what_the_reference_cannot_hold() -> None:
    """Exporting a non-TDS model or a TDS the reference cannot express is a ValueError naming what differs."""
    with pytest.raises(ValueError, match="model.arch"):
        export_reference(build_model(from_dict(ModelConfig, {"arch": "gru", "rnn": {"hidden_size": 8, "num_layers": 1}})))
    with pytest.raises(ValueError, match="feature_order"):
        export_reference(build_model(from_dict(ModelConfig, {**SMALL, "tds": {**SMALL["tds"], "feature_order": "width_major"}})))
    with pytest.raises(ValueError, match="offsets"):
        export_reference(build_model(from_dict(ModelConfig, {**SMALL, "frontend": {"mlp_features": [48], "offsets": [0]}})))


# --- safe loading and damaged files ---------------------------------------------------------------

@needs_fixtures
def test_read_reference_needs_no_omegaconf(monkeypatch: pytest.MonkeyPatch) -> None:
    """read_reference loads a checkpoint pickling omegaconf objects while omegaconf cannot be imported."""
    for mod in ("omegaconf", "omegaconf.dictconfig", "omegaconf.listconfig", "omegaconf.base", "omegaconf.nodes"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import omegaconf` now raises ImportError
    with pytest.raises(ImportError):
        import omegaconf  # noqa: F401
    r = read_reference(FIXTURES / CHECKPOINTS["tds_small_step24"])
    assert r.hyper_parameters["mlp_features"] == [96] and r.hyper_parameters["block_channels"] == [24, 24]
    assert isinstance(r.hyper_parameters["optimizer"], dict) and (r.epoch, r.global_step) == (1, 24)
    assert r.model_cfg.tds.kernel_width == 16


class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    """A checkpoint whose pickle calls an arbitrary function is refused with a ValueError, the function not run."""
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"in_features": _Payload(target)}}, path)
    with pytest.raises(ValueError, match=r"evil\.ckpt: not a readable reference checkpoint .*mkdir"):
        read_reference(path)
    assert not target.exists()
    assert not is_reference_checkpoint(path)


def _drop_tensor(ck: dict) -> None:
    del ck["state_dict"]["model.3.tds_conv_blocks.1.fc_block.0.bias"]


def _reshape_tensor(ck: dict) -> None:
    ck["state_dict"]["model.4.weight"] = torch.zeros(99, 100)


def _unknown_hparam(ck: dict) -> None:
    ck["hyper_parameters"]["dropout"] = 0.1


def _extra_tensor(ck: dict) -> None:
    ck["state_dict"]["model.9.weight"] = torch.zeros(3)


@pytest.mark.parametrize("edit, message", [
    (None, "not a readable reference checkpoint"),  # truncated
    (_drop_tensor, r"missing tensor model\.3\.tds_conv_blocks\.1\.fc_block\.0\.bias"),
    (_reshape_tensor, r"tensor model\.4\.weight has shape \(99, 100\), expected \(99, 96\)"),
    (_unknown_hparam, r"hyper_parameters not those of TDSConvCTCModule \(unknown 'dropout'\)"),
    (_extra_tensor, r"tensor model\.9\.weight does not map"),
])
def test_damaged_checkpoint_is_one_clear_error(tmp_path: Path, edit, message: str) -> None:
    """A truncated file, a missing / reshaped / extra tensor or an unknown hyper-parameter: one ValueError naming the file."""
    good = tmp_path / "good.ckpt"
    torch.save(reference_lightning_checkpoint(random_tds()), good)
    bad = tmp_path / "bad.ckpt"
    if edit is None:
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        ck = torch.load(good, weights_only=True)
        edit(ck)
        torch.save(ck, bad)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: .*{message}") as e:
        read_reference(bad)
    assert "\n" not in str(e.value)


def test_is_reference_checkpoint_tells_the_formats_apart(tmp_path: Path) -> None:
    """True for a reference Lightning checkpoint; false for an emgscale checkpoint, other files and folders."""
    from emgscale.models.checkpoint import Checkpoint, save_checkpoint

    ref = tmp_path / "ref.ckpt"
    torch.save(reference_lightning_checkpoint(random_tds()), ref)
    ours = save_checkpoint(tmp_path / "ours.pt", Checkpoint(model=random_tds().state_dict(), config={}))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(pickle.dumps({"state_dict": 1}))
    assert is_reference_checkpoint(ref)
    assert not any(is_reference_checkpoint(p) for p in (ours, junk, tmp_path, tmp_path / "missing.ckpt"))
    if FIXTURES.is_dir():
        assert all(is_reference_checkpoint(FIXTURES / f) for f in CHECKPOINTS.values())


# --- the CLI and fine-tuning ----------------------------------------------------------------------

def test_cli_import_and_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """import-reference writes an emgscale checkpoint of the same model; export goes back exactly; errors exit 2."""
    from emgscale.eval import load_model

    ref = tmp_path / "ref.ckpt"
    model = random_tds(4)
    torch.save(reference_lightning_checkpoint(model, global_step=11), ref)
    assert models_main(["import-reference", str(ref), "--out", str(tmp_path / "ours.pt")]) == 0
    loaded, cfg = load_model(tmp_path / "ours.pt")
    assert to_dict(cfg.model) == to_dict(model.cfg)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert models_main(["export", str(tmp_path / "ours.pt"), "--to", "reference", "--out", str(tmp_path / "back.ckpt")]) == 0
    back = read_reference(tmp_path / "back.ckpt")
    assert back.global_step == 11 and all(torch.equal(back.state_dict[k], v) for k, v in model.state_dict().items())
    capsys.readouterr()
    assert models_main(["import-reference", str(tmp_path / "ours.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ours.pt: not a PyTorch Lightning checkpoint" in err
    assert not (tmp_path / "x.pt").exists()


def _finetune_config(corpus, out: Path, init_from: Path, model_cfg: ModelConfig):
    from emgscale.train import load_train_config

    cfg = load_train_config([], [f"data.data_root={corpus.root}", f"data.split={corpus.split_path}",
                                 f"run.out_dir={out}", f"run.init_from={init_from}", "data.batch_size=2",
                                 "data.window.window_samples=2000", "data.window.pad_left_samples=200", "data.window.pad_right_samples=0",
                                 "run.max_epochs=1", "run.steps_per_epoch=2", "run.val_max_batches=1",
                                 "run.tensorboard=false", "run.threads=1", "optim.lr=1e-12"])
    cfg.model = model_cfg
    return cfg


def _assert_finetuned_from(result, model: torch.nn.Module) -> None:
    """Two steps at a near-zero LR: finite loss and the imported weights kept (a random init would differ)."""
    from emgscale.models.checkpoint import load_checkpoint

    assert result.steps == 2
    after = load_checkpoint(result.last_checkpoint).model
    params = [k for k in after if not any(t in k for t in ("running_", "num_batches"))]  # BN stats move in train mode
    assert params and all(torch.allclose(after[k].float(), model.state_dict()[k].float(), atol=1e-6) for k in params)
    assert all(np.isfinite(h["train_loss"]) for h in result.history if "train_loss" in h)


@needs_fixtures
def test_imported_checkpoint_finetunes_with_init_from(tiny_corpus, tmp_path: Path) -> None:
    """run.init_from=<checkpoint written by import-reference> fine-tunes the reference model a few steps."""
    from emgscale.train import train

    src = FIXTURES / CHECKPOINTS["tds_small_step24"]
    assert models_main(["import-reference", str(src), "--out", str(tmp_path / "generic.pt")]) == 0
    model = import_reference(src)
    _assert_finetuned_from(train(_finetune_config(tiny_corpus, tmp_path / "run", tmp_path / "generic.pt", model.cfg)),
                           model)


@needs_fixtures
def test_reference_ckpt_itself_finetunes_with_init_from(tiny_corpus, tmp_path: Path) -> None:
    """run.init_from=<the reference .ckpt itself> fine-tunes it (once load_checkpoint accepts reference files)."""
    from emgscale.train import train

    src = FIXTURES / CHECKPOINTS["tds_small_step24"]
    model = import_reference(src)
    _assert_finetuned_from(train(_finetune_config(tiny_corpus, tmp_path / "run", src, model.cfg)), model)


@needs_fixtures
def test_few_shot_and_zero_shot_run_from_a_reference_generic_model(tmp_path: Path, bench_cache: Path) -> None:
    """`bench few_shot|zero_shot --generic-checkpoint REF.ckpt` use Meta's-format model: evaluated, fine-tuned, named."""
    import json

    from emgscale.bench.__main__ import main as bench_main

    src = FIXTURES / CHECKPOINTS["tds_small_step24"]
    for name in ("few_shot", "zero_shot"):
        assert bench_main([name, "--budget", "tiny", "--out", str(tmp_path), "--generic-checkpoint", str(src),
                           "run.threads=1"]) == 0
        res = json.loads((tmp_path / name / "results.json").read_text())
        assert res["generic_checkpoint"] == str(src)
        assert "given, not trained here" in (tmp_path / name / "table.md").read_text()
    runs = list((bench_cache / "runs").glob("*/config.yaml"))
    assert runs and all(f"init_from: {src}" in r.read_text() for r in runs)  # only fine-tunes were trained
    variants = [r["variant"] for r in res["tables"]["zero_shot"]["aggregate"]]
    assert variants == ["given model: seen users, new sessions", "given model (tds_small_step24.ckpt)"]
