"""braindecode's EMG2QwertyNet (emgscale.models.braindecode): same emissions, exact round trips, clear refusals.

Ground truth: ``../shared/braindecode-models/`` (its README): a state dict written by braindecode 1.8.1's
``EMG2QwertyNet`` (default constructor, a few training steps), its constructor arguments and
braindecode's own log-probabilities on ``../shared/reference-checkpoints/session.hdf5``. Tests needing
those files skip when the folder is absent; braindecode itself is not needed (it pulls torchaudio and mne):
``braindecode_forward`` below is its forward written from its source, checked against the fixture.
Tolerance of emissions: float32 rounding, as tests/test_reference.py explains.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emgscale.config import from_dict, to_dict
from emgscale.models import ModelConfig, build_model, export_braindecode, import_braindecode, read_braindecode
from emgscale.models.__main__ import main as models_main
from emgscale.models.braindecode import braindecode_kwargs, read_kwargs

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "braindecode-models"
SESSION = REPO.parent / "shared" / "reference-checkpoints" / "session.hdf5"
STATE = FIXTURES / "emg2qwertynet_default.pt"
needs_fixtures = pytest.mark.skipif(not (STATE.is_file() and SESSION.is_file()),
                                    reason=f"braindecode fixtures not found at {FIXTURES}")
EMISSION_ATOL = 1e-3
#: Two emgscale TDS models beside the default: every knob EMG2QwertyNet has, shapes shown or not.
CONFIGS = {
    "small": {"frontend": {"mlp_features": [48]}, "tds": {"block_channels": [24, 32], "kernel_width": 8}},
    "wide": {"features": {"n_fft": 33, "hop_samples": 8},
             "frontend": {"mlp_features": [64, 32], "offsets": [-2, 0, 2], "pooling": "max"},
             "tds": {"block_channels": [16, 8], "kernel_width": 5, "dropout": 0.1}},
    "1khz": {"features": {"sample_rate_hz": 1000.0, "input_sample_rate_hz": 1000.0, "scale_with_rate": False,
                          "n_fft": 32, "hop_samples": 8},
             "frontend": {"mlp_features": [32]}, "tds": {"block_channels": [8], "kernel_width": 9}},
}


# --- braindecode's function, written from its source (time-first, channel-major) --------------------

def braindecode_forward(sd: dict[str, torch.Tensor], kw: dict, emg: torch.Tensor) -> torch.Tensor:
    """``log_softmax(EMG2QwertyNet(**kw).eval()(x))[0]`` from its state dict, for ``emg`` (T, 32) = ``x[0].T``."""
    n_fft, hop = kw.get("n_fft", 64), kw.get("hop_length", 16)
    offsets, pooling = kw.get("rotation_offsets", (-1, 0, 1)), kw.get("pooling", "mean")
    fc2 = 3 if kw.get("drop_prob", 0.0) > 0 else 2
    win = torch.hann_window(n_fft, dtype=emg.dtype)
    spec = torch.stft(emg.T, n_fft, hop, window=win, center=False, return_complex=True)  # (32, K, T')
    x = torch.log10(spec.abs().pow(2) / win.pow(2).sum() + 1e-6)[None]  # torchaudio Spectrogram(normalized=True)
    bn = "model.0.batch_norm."
    x = F.batch_norm(x, sd[bn + "running_mean"], sd[bn + "running_var"], sd[bn + "weight"], sd[bn + "bias"],
                     False, 0.0, 1e-5)
    x = x.reshape(1, 2, 16, x.shape[2], x.shape[3]).movedim(-1, 0)  # (T', N, bands, E, K)
    outs = []
    for b in range(2):
        h = torch.stack([x[:, :, b].roll(o, dims=2) for o in offsets], 2).flatten(3)
        j = 0
        while f"model.1.mlps.{b}.mlp.{j}.weight" in sd:
            h = torch.relu(F.linear(h, sd[f"model.1.mlps.{b}.mlp.{j}.weight"], sd[f"model.1.mlps.{b}.mlp.{j}.bias"]))
            j += 2
        outs.append(h.mean(2) if pooling == "mean" else h.amax(2))
    h = torch.stack(outs, 2).flatten(2)
    nf, i = h.shape[-1], 0
    while f"model.3.tds_conv_blocks.{i}.conv2d.weight" in sd:
        p = f"model.3.tds_conv_blocks.{i}."
        c = sd[p + "conv2d.weight"].shape[0]
        z = h.movedim(0, -1).reshape(1, c, nf // c, h.shape[0])
        z = torch.relu(F.conv2d(z, sd[p + "conv2d.weight"], sd[p + "conv2d.bias"])).reshape(1, nf, -1).movedim(-1, 0)
        h = F.layer_norm(z + h[-z.shape[0]:], (nf,), sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"])
        p = f"model.3.tds_conv_blocks.{i + 1}."
        z = F.linear(torch.relu(F.linear(h, sd[p + "fc_block.0.weight"], sd[p + "fc_block.0.bias"])),
                     sd[p + f"fc_block.{fc2}.weight"], sd[p + f"fc_block.{fc2}.bias"])
        h = F.layer_norm(z + h, (nf,), sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"])
        i += 2
    return F.linear(h, sd["final_layer.weight"], sd["final_layer.bias"]).log_softmax(-1)[:, 0]


def random_tds(name: str, seed: int = 0) -> torch.nn.Module:
    """An emgscale TDS of ``CONFIGS[name]`` with every weight and BN statistic randomised (eval mode)."""
    torch.manual_seed(seed)
    model = build_model(from_dict(ModelConfig, CONFIGS[name])).eval()
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if key.endswith("running_var") else torch.randn_like(t) * 0.3)
    return model


def session_emg() -> np.ndarray:
    """The fixture session as (T, 2, 16) float32."""
    from emgscale.data.session import EMGSession

    with EMGSession(SESSION) as s:
        return np.ascontiguousarray(s.emg())


# --- emissions and function -------------------------------------------------------------------------

@needs_fixtures
def test_imported_state_dict_reproduces_braindecode_emissions() -> None:
    """Whole-session log-probs of the imported fixture equal braindecode's own (log_softmax of its logits)."""
    from emgscale.data.session import EMGSession
    from emgscale.eval import infer_session

    model = import_braindecode(STATE, FIXTURES / "emg2qwertynet_default.json")
    with torch.no_grad():
        ours = infer_session(model, EMGSession(SESSION), chunk_seconds=0)
    theirs = np.load(FIXTURES / "emg2qwertynet_default.log_probs.npy")
    assert ours.shape == theirs.shape
    diff = float(np.abs(ours - theirs).max())
    print(f"emg2qwertynet_default: max |log-prob difference| {diff:.3g}")
    assert diff < EMISSION_ATOL


@needs_fixtures
def test_test_braindecode_function_reproduces_braindecode_emissions() -> None:
    """This file's braindecode_forward (used below) reproduces braindecode's emissions from its state dict."""
    sd = torch.load(STATE, weights_only=True)
    emg = torch.from_numpy(session_emg()).reshape(-1, 32)  # (T, 32): left 0-15 then right 0-15
    with torch.no_grad():
        out = braindecode_forward(sd, {}, emg)
    assert float(np.abs(out.numpy() - np.load(FIXTURES / "emg2qwertynet_default.log_probs.npy")).max()) < EMISSION_ATOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_whole_model_equals_braindecode_function(name: str) -> None:
    """EMG -> log-probs of an emgscale TDS equals EMG2QwertyNet's function (float64) on its exported weights."""
    model = random_tds(name)
    sd, kw = export_braindecode(model)
    torch.manual_seed(1)
    emg = torch.randn(2500, 2, 16) * 20.0
    with torch.no_grad():
        ours, out_len = model(emg[None], torch.tensor([2500]))
        theirs = braindecode_forward({k: v.double() for k, v in sd.items()}, kw, emg.double().reshape(-1, 32))
    assert ours.shape[1] == int(out_len[0]) == theirs.shape[0]
    assert float((ours[0].double() - theirs).abs().max()) < 1e-4  # float32 vs exact


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_model_runs_in_braindecode_itself(name: str) -> None:
    """Where braindecode installs cleanly: EMG2QwertyNet(**kwargs) with the exported state dict gives our emissions."""
    bd = pytest.importorskip("braindecode.models", reason="braindecode not installed (it pulls torchaudio and mne)")
    model = random_tds(name, seed=8)
    sd, kw = export_braindecode(model)
    net = bd.EMG2QwertyNet(**kw).eval()
    net.load_state_dict(sd)
    torch.manual_seed(1)
    emg = torch.randn(2500, 2, 16) * 20.0
    with torch.no_grad():
        ours = model(emg[None], torch.tensor([2500]))[0][0]
        theirs = net(emg.reshape(1, 2500, 32).transpose(1, 2)).log_softmax(-1)[0]
    assert ours.shape == theirs.shape and float((ours - theirs).abs().max()) < EMISSION_ATOL


# --- round trips ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_import_round_trip_is_exact(name: str, tmp_path: Path) -> None:
    """export_braindecode -> read_braindecode with its kwargs gives back every tensor bit for bit, same config."""
    model = random_tds(name, seed=2)
    sd, kw = export_braindecode(model)
    torch.save(sd, tmp_path / "state.pt")
    r = read_braindecode(tmp_path / "state.pt", json.loads(json.dumps(kw)))  # the kwargs as the JSON file holds them
    want = model.state_dict()
    assert sorted(r.state_dict) == sorted(want) and all(torch.equal(r.state_dict[k], want[k]) for k in want)
    assert to_dict(r.model_cfg) == to_dict(model.cfg)


@needs_fixtures
def test_import_export_gives_back_the_braindecode_tensors() -> None:
    """The fixture imported then exported is the same state dict, bit for bit; its model is the reference's default."""
    theirs = torch.load(STATE, weights_only=True)
    sd, kw = export_braindecode(import_braindecode(STATE))
    assert sorted(sd) == sorted(theirs) and all(torch.equal(sd[k], theirs[k]) for k in theirs)
    assert kw["mlp_features"] == [384] and kw["block_channels"] == [24] * 4 and kw["pooling"] == "mean"
    # the default EMG2QwertyNet is the reference's default TDSConvCTCModule (same emgscale model config)
    from emgscale.models import read_reference

    ref = read_reference(SESSION.parent / "tds_default_step12_noopt.ckpt").model_cfg
    assert to_dict(read_braindecode(STATE).model_cfg) == to_dict(ref)


def test_kwargs_come_from_the_file_beside_or_a_hub_folder(tmp_path: Path) -> None:
    """No kwargs: <stem>.json beside the state dict, or config.json in a hub folder (flat, dotted activation)."""
    model = random_tds("wide", seed=3)
    sd, kw = export_braindecode(model)
    torch.save(sd, tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps({"class": "braindecode.models.EMG2QwertyNet", "kwargs": kw}))
    assert to_dict(read_braindecode(tmp_path / "m.pt").model_cfg) == to_dict(model.cfg)
    over = read_braindecode(tmp_path / "m.pt", overrides={"pooling": "mean"}).model_cfg  # --arg on top of the file
    assert over.frontend.pooling == "mean" and over.features.hop_samples == 8
    hub = tmp_path / "hub"
    hub.mkdir()
    torch.save(sd, hub / "pytorch_model.bin")
    (hub / "config.json").write_text(json.dumps({**kw, "activation": "torch.nn.modules.activation.ReLU",
                                                 "braindecode_version": "1.8.1", "n_times": None}))
    for src in (hub, hub / "pytorch_model.bin"):
        r = read_braindecode(src)
        assert to_dict(r.model_cfg) == to_dict(model.cfg)
        assert all(torch.equal(r.state_dict[k], v) for k, v in model.state_dict().items())
    assert read_kwargs(hub / "config.json")["pooling"] == "max"


@pytest.mark.parametrize("kwargs, message", [
    ({"activation": "torch.nn.GELU"}, "activation 'torch.nn.GELU' (emgscale's TDS uses ReLU)"),
    ({"log_eps": 1e-4}, "log_eps 0.0001"),
    ({"mlp_features": [96]}, "mlp_features [96] but the state dict has [48]"),
    ({"n_fft": 50}, "n_fft 50 but the state dict has 33 frequency bins"),
    ({"drop_prob": 0.2}, "drop_prob 0.2 but the state dict has no dropout layers"),
    ({"pooling": "sum"}, "pooling 'sum'"),
    ({"n_chans": 30}, "n_chans 30 is not num_bands x electrodes_per_band"),
    ({"depth": 3}, "unknown EMG2QwertyNet argument(s) 'depth'"),
])
def test_unsupported_configuration_is_one_error_naming_it(kwargs: dict, message: str, tmp_path: Path) -> None:
    """A configuration emgscale's TDS cannot compute, or kwargs against the shapes: one line naming what differs."""
    sd, _ = export_braindecode(random_tds("small"))
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(ValueError) as e:
        read_braindecode(tmp_path / "m.pt", kwargs)
    assert message in str(e.value) and "\n" not in str(e.value) and str(tmp_path / "m.pt") in str(e.value)


def test_damaged_or_foreign_files_are_one_clear_error(tmp_path: Path) -> None:
    """Not a state dict, a missing tensor, another class in the kwargs file: one line naming the file."""
    sd, _ = export_braindecode(random_tds("small"))
    cases = {"junk.pt": b"not a zip", "list.pt": [torch.zeros(2)],
             "lightning.pt": {"state_dict": sd, "hyper_parameters": {}},
             "missing.pt": {k: v for k, v in sd.items() if not k.startswith("final_layer")},
             "extra.pt": {**sd, "model.5.weight": torch.zeros(3)}}
    want = {"junk.pt": "not a readable state dict", "list.pt": "not a state dict",
            "lightning.pt": "use import-reference", "missing.pt": "no tensor final_layer.weight",
            "extra.pt": "tensor model.5.weight does not map"}
    for name, obj in cases.items():
        path = tmp_path / name
        path.write_bytes(obj) if isinstance(obj, bytes) else torch.save(obj, path)
        with pytest.raises(ValueError, match=f"{path}: .*{want[name]}"):
            read_braindecode(path, {})
    (tmp_path / "other.json").write_text(json.dumps({"class": "braindecode.models.EEGNet", "kwargs": {}}))
    with pytest.raises(ValueError, match="other.json: class is 'braindecode.models.EEGNet'"):
        read_braindecode(tmp_path / "extra.pt", tmp_path / "other.json")


def test_braindecode_kwargs_refuse_what_it_cannot_hold() -> None:
    """Exporting a model EMG2QwertyNet cannot express names what differs."""
    for over, message in [({"arch": "lstm"}, "model.arch 'lstm'"), ({"features": {"norm": "rolling"}}, "batch norm"),
                          ({"frontend": {"kind": "flatten"}}, "model.frontend.kind 'flatten'")]:
        with pytest.raises(ValueError, match=message):
            braindecode_kwargs(from_dict(ModelConfig, over))


# --- the CLI, eval, fine-tuning and the benchmark ------------------------------------------------------

def test_cli_import_and_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """import-braindecode (--kwargs, --arg) writes a checkpoint eval loads; export goes back exactly; errors exit 2."""
    from emgscale.eval import load_model

    model = random_tds("wide", seed=4)
    sd, kw = export_braindecode(model)
    torch.save(sd, tmp_path / "bd.pt")
    (tmp_path / "args.json").write_text(json.dumps({"kwargs": {**kw, "pooling": "mean"}}))
    assert models_main(["import-braindecode", str(tmp_path / "bd.pt"), "--kwargs", str(tmp_path / "args.json"),
                        "--arg", "pooling=max", "--arg", "rotation_offsets=[-2, 0, 2]",
                        "--out", str(tmp_path / "ours.pt")]) == 0
    loaded, cfg = load_model(tmp_path / "ours.pt")
    assert to_dict(cfg.model) == to_dict(model.cfg)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert models_main(["export", str(tmp_path / "ours.pt"), "--to", "braindecode",
                        "--out", str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], v) for k, v in sd.items())
    assert read_kwargs(tmp_path / "back.json") == kw
    capsys.readouterr()
    assert models_main(["import-braindecode", str(tmp_path / "bd.pt"), "--arg", "activation=ELU",
                        "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "activation 'ELU'" in err and not (tmp_path / "x.pt").exists()


def test_imported_model_finetunes_with_init_from_and_evaluates(tiny_corpus, tmp_path: Path) -> None:
    """run.init_from=<checkpoint written by import-braindecode> fine-tunes it; eval takes the imported file."""
    from emgscale.models.checkpoint import load_checkpoint
    from emgscale.eval import EvalConfig, evaluate
    from emgscale.train import load_train_config, train

    model = random_tds("small", seed=5)
    torch.save(export_braindecode(model)[0], tmp_path / "bd.pt")
    assert models_main(["import-braindecode", str(tmp_path / "bd.pt"), "--kwargs", _kwargs_file(model, tmp_path),
                        "--out", str(tmp_path / "generic.pt")]) == 0
    res = evaluate(from_dict(EvalConfig, {"checkpoint": str(tmp_path / "generic.pt"), "split": "val",
                                          "data_root": str(tiny_corpus.root), "split_file": str(tiny_corpus.split_path),
                                          "out": str(tmp_path / "eval.json")}))
    assert np.isfinite(res["cer"])
    cfg = load_train_config([], [f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}",
                                 f"run.out_dir={tmp_path / 'run'}", f"run.init_from={tmp_path / 'generic.pt'}",
                                 "data.batch_size=2", "data.window.window_samples=2000",
                                 "data.window.pad_left_samples=200", "data.window.pad_right_samples=0",
                                 "run.max_epochs=1", "run.steps_per_epoch=2", "run.val_max_batches=1",
                                 "run.tensorboard=false", "run.threads=1", "optim.lr=1e-12"])
    cfg.model = model.cfg
    result = train(cfg)
    after = load_checkpoint(result.last_checkpoint).model
    params = [k for k in after if not any(t in k for t in ("running_", "num_batches"))]  # BN stats move in train mode
    assert result.steps == 2 and params
    assert all(torch.allclose(after[k].float(), model.state_dict()[k].float(), atol=1e-6) for k in params)


def _kwargs_file(model: torch.nn.Module, tmp_path: Path) -> str:
    path = tmp_path / "kwargs.json"
    path.write_text(json.dumps({"kwargs": braindecode_kwargs(model.cfg)}))
    return str(path)


@pytest.mark.slow
def test_bench_takes_an_imported_model_as_generic_checkpoint(tmp_path: Path, bench_cache: Path) -> None:
    """`bench zero_shot --generic-checkpoint <imported braindecode model>` evaluates it, trains nothing, names it."""
    from emgscale.bench.__main__ import main as bench_main

    model = random_tds("small", seed=6)
    torch.save(export_braindecode(model)[0], tmp_path / "bd.pt")
    src = tmp_path / "generic.pt"
    assert models_main(["import-braindecode", str(tmp_path / "bd.pt"), "--kwargs", _kwargs_file(model, tmp_path),
                        "--out", str(src)]) == 0
    assert bench_main(["zero_shot", "--budget", "tiny", "--out", str(tmp_path / "b"), "--generic-checkpoint", str(src),
                       "run.threads=1"]) == 0
    res = json.loads((tmp_path / "b" / "zero_shot" / "results.json").read_text())
    assert res["generic_checkpoint"] == str(src)
    variants = [r["variant"] for r in res["tables"]["zero_shot"]["aggregate"]]
    assert variants == ["given model: seen users, new sessions", "given model (generic.pt)"]
    row = res["tables"]["zero_shot"]["aggregate"][1]  # the rates and rendered CER reach the results JSON
    assert {"test_greedy_rendered_cer_mean", "test_greedy_substitution_rate_mean"} <= set(row)
    assert not list((bench_cache / "runs").glob("*/config.yaml"))  # nothing trained here


def test_readme_braindecode_lines_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's import-braindecode and export --to braindecode lines work as written (in a scratch folder)."""
    import shlex

    lines = [ln.split("  #")[0].strip() for ln in (REPO / "README.md").read_text().splitlines()]
    imp, exp = ([ln for ln in lines if ln.startswith(f"python -m emgscale.models {p}")] for p in
                ("import-braindecode", "export runs/x/checkpoints/best.pt --to braindecode"))
    assert len(imp) == 1 and len(exp) == 1
    monkeypatch.chdir(tmp_path)
    model = random_tds("small", seed=7)
    sd, kw = export_braindecode(model)
    torch.save(sd, "pytorch_model.bin")
    Path("config.json").write_text(json.dumps({**kw, "braindecode_version": "1.8.1"}))
    assert models_main(shlex.split(imp[0])[3:]) == 0
    Path("runs/x/checkpoints").mkdir(parents=True)
    Path("runs/generic.pt").rename("runs/x/checkpoints/best.pt")
    assert models_main(shlex.split(exp[0])[3:]) == 0
    back = torch.load("runs/x.pt", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in sd.items()) and read_kwargs("runs/x.json") == kw
