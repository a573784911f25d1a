"""CTC models and encoders (emgscale.models): shapes, lengths, padding, contexts, configs."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
import torch.nn.functional as F
import yaml

from emgscale.config import from_dict, shipped_configs
from emgscale.models import ENCODERS, ModelConfig, build_model, count_parameters
from emgscale.models.attention import AttentionMask
from emgscale.models.frontend import RotationInvariantMLP
from emgscale.models.streaming import NotStreamable
from emgscale.models.tds import TDSConfig, TDSConvEncoder

torch.set_num_threads(1)
CONFIG_DIR = shipped_configs() / "models"

# Small models of every family (and the attention / causal variants), for fast tests.
TINY_BASE = {"frontend": {"mlp_features": [24]}}
TINY = {
    "tds": {"arch": "tds", "tds": {"block_channels": [8, 8], "kernel_width": 4}},
    "lstm": {"arch": "lstm", "rnn": {"hidden_size": 16, "num_layers": 2}},
    "bigru": {"arch": "gru", "rnn": {"hidden_size": 16, "num_layers": 2, "bidirectional": True}},
    "cnn_bilstm": {"arch": "cnn_rnn", "cnn_rnn": {"conv_channels": [16, 16], "strides": [2, 2], "rnn_type": "lstm",
                                                  "hidden_size": 16}},
    "cnn_gru_causal": {"arch": "cnn_rnn", "cnn_rnn": {"conv_channels": [16], "strides": [2], "causal": True,
                                                      "bidirectional": False, "hidden_size": 16}},
    "conformer": {"arch": "conformer", "conformer": {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64,
                                                     "conv_kernel": 5, "left_frames": 6, "right_frames": 3}},
    "conformer_causal": {"arch": "conformer", "conformer": {"d_model": 32, "num_layers": 2, "num_heads": 2,
                                                            "ffn_dim": 64, "conv_kernel": 5, "left_frames": 6,
                                                            "causal": True}},
    "transformer": {"arch": "transformer", "transformer": {"d_model": 32, "num_layers": 2, "num_heads": 2,
                                                           "ffn_dim": 64, "left_frames": 5, "right_frames": 2,
                                                           "subsampling_strides": [2, 2]}},
    "transformer_chunk": {"arch": "transformer", "transformer": {"d_model": 32, "num_layers": 2, "num_heads": 2,
                                                                 "ffn_dim": 64, "attention": "chunk",
                                                                 "chunk_frames": 8, "left_chunks": 1}},
    "transformer_full": {"arch": "transformer", "transformer": {"d_model": 32, "num_layers": 1, "num_heads": 2,
                                                                "ffn_dim": 64, "attention": "full"}},
    "s4d": {"arch": "s4d", "s4d": {"d_model": 16, "d_state": 8, "num_layers": 2, "kernel_size": 5, "stride": 5}},
}

#: the TINY models whose encoder streams (causal); the others must say why not
STREAMABLE = {"tds", "lstm", "cnn_gru_causal", "conformer_causal", "s4d"}


def tiny_cfg(name: str, **features: typing.Any) -> ModelConfig:
    data = {**TINY_BASE, **TINY[name]}
    if features:
        data["features"] = features
    return from_dict(ModelConfig, data)


def tiny_model(name: str, seed: int = 0, **features: typing.Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_cfg(name, **features)).eval()


def rand_emg(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, samples, 2, 16, generator=torch.Generator().manual_seed(seed)) * 20.0


def test_tds_default_parameter_count_matches_reference() -> None:
    """The default model (TDS-Conv) has exactly the reference's 5,293,315 parameters."""
    model = build_model(ModelConfig())
    assert count_parameters(model) == 5_293_315
    out, lengths = model.eval()(rand_emg(1, 10000), torch.tensor([10000]))
    assert out.shape == (1, 498, 99) and int(lengths[0]) == 498  # 622 frames - 124


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_length_formula_matches_shapes(name: str) -> None:
    """output_lengths(n) equals the real output length for a grid of input lengths, and forward agrees."""
    model = tiny_model(name)
    n0 = model.min_input_samples
    assert int(model.output_lengths(torch.tensor([n0]))[0]) >= 1
    assert int(model.output_lengths(torch.tensor([n0 - 1]))[0]) == 0
    with torch.no_grad():
        for n in sorted({n0, n0 + 1, n0 + 15, n0 + 16, n0 + 17, n0 + 31, n0 + 64, n0 + 100, n0 + 333, 2000}):
            y, lengths = model(rand_emg(1, n), torch.tensor([n]))
            expect = int(model.output_lengths(torch.tensor([n]))[0])
            assert y.shape[1] == int(lengths[0]) == expect, n


@pytest.mark.parametrize("name", sorted(TINY))
def test_padding_never_changes_a_sequence_output(name: str) -> None:
    """A batched forward (eval) equals each sequence run alone, whatever the padding holds."""
    model = tiny_model(name)
    x = rand_emg(3, 1600)
    lengths = torch.tensor([1600, 1234, max(model.min_input_samples + 40, 700)])
    with torch.no_grad():
        y, out_lengths = model(x, lengths)
        for b in range(3):
            n = int(lengths[b])
            alone, la = model(x[b:b + 1, :n], lengths[b:b + 1])
            assert int(la[0]) == int(out_lengths[b]) == alone.shape[1]
            torch.testing.assert_close(alone[0], y[b, : alone.shape[1]], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_encoder_ignores_garbage_in_padding(name: str) -> None:
    """Encoder contract: large garbage in padded frames changes no valid output frame, and padded outputs are 0."""
    enc = tiny_model(name).encoder
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 90, enc.in_features, generator=g)
    lengths = torch.tensor([90, 71, 50])
    for b in range(3):
        x[b, int(lengths[b]):] = 100 * torch.randn(90 - int(lengths[b]), enc.in_features, generator=g)
    with torch.no_grad():
        y, out_lengths = enc(x, lengths)
        assert torch.equal(out_lengths, enc.output_lengths(lengths))
        for b in range(3):
            n = int(lengths[b])
            alone, la = enc(x[b:b + 1, :n], lengths[b:b + 1])
            assert int(la[0]) == alone.shape[1] == int(out_lengths[b])
            torch.testing.assert_close(alone[0], y[b, : alone.shape[1]], atol=1e-4, rtol=1e-4)
            assert bool((y[b, int(out_lengths[b]):] == 0).all())


@pytest.mark.parametrize("name", ["tds", "conformer", "conformer_causal", "transformer", "transformer_chunk",
                                  "cnn_gru_causal"])
def test_chunks_match_whole_sequence_outside_context(name: str) -> None:
    """Frames of a chunk away from its edges (left/right_context_frames) equal whole-sequence frames."""
    model = tiny_model(name, norm="none" if name == "cnn_gru_causal" else "batch")
    n = 6000
    x = rand_emg(1, n)
    with torch.no_grad():
        whole, _ = model(x, torch.tensor([n]))
        start = 3 * model.alignment_samples
        for length in (3000, 3000 + model.samples_per_frame // 2 + 1):
            part, _ = model(x[:, start:start + length], torch.tensor([length]))
            offset = start // model.samples_per_frame
            lo = model.left_context_frames or 0
            hi = part.shape[1] - (model.right_context_frames if model.right_context_frames is not None else 0)
            if model.left_context_frames is None:  # causal RNN: the start never matches; only check the end
                continue
            assert hi - lo > 5
            torch.testing.assert_close(part[0, lo:hi], whole[0, offset + lo:offset + hi], atol=2e-4, rtol=1e-4)
            if lo > 0:  # the context is needed: the chunk's first frame differs
                assert not torch.allclose(part[0, 0], whole[0, offset], atol=1e-3)


def test_causal_models_ignore_the_future() -> None:
    """Causal variants: changing samples after time t never changes output frames that end before t."""
    for name in ("conformer_causal", "cnn_gru_causal", "lstm", "tds", "s4d"):
        model = tiny_model(name)
        x = rand_emg(1, 2400)
        x2 = x.clone()
        x2[:, 1600:] = rand_emg(1, 800, seed=9)
        with torch.no_grad():
            y, _ = model(x, torch.tensor([2400]))
            y2, _ = model(x2, torch.tensor([2400]))
        # frame j reads samples up to j * samples_per_frame + span right
        right = model.span_samples[1]
        safe = (1600 - right) // model.samples_per_frame
        assert safe > 5
        torch.testing.assert_close(y[:, :safe], y2[:, :safe], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(y, y2)


def test_every_model_yaml_builds() -> None:
    """Every configs/models/*.yaml has a top-level `model:` mapping and builds its model."""
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        data = yaml.safe_load(path.read_text())
        assert set(data) == {"model"}, path
        cfg = from_dict(ModelConfig, data["model"])
        model = build_model(cfg)
        assert count_parameters(model) > 0
        assert model.min_input_samples <= 10000, path


def test_yaml_sizes_span_small_to_large() -> None:
    """The shipped configs include a CPU-sized model (< 2 M params) and a large one (> 20 M)."""
    counts = {p.stem: count_parameters(build_model(from_dict(ModelConfig, yaml.safe_load(p.read_text())["model"])))
              for p in CONFIG_DIR.glob("*.yaml")}
    assert min(counts.values()) < 2_000_000 and max(counts.values()) > 20_000_000, counts


# One changed value per config field; `test_every_config_field_reaches_the_model` needs all of them.
FIELD_CHANGES: dict[str, tuple[typing.Any, dict[str, typing.Any]]] = {
    "arch": ("lstm", {}),
    "head_blank_prior": (0.9, {}),
    "features.kind": ("log_bands", {}),
    "features.n_fft": (32, {}),
    "features.hop_samples": (8, {}),
    "features.scale_with_rate": (False, {"features.sample_rate_hz": 1000.0, "features.n_fft": 32,
                                         "features.hop_samples": 8}),
    "features.num_log_bands": (4, {"features.kind": "log_bands"}),
    "features.sample_rate_hz": (1000.0, {}),
    "features.input_sample_rate_hz": (4000.0, {}),
    "features.channels": ([0, 2, 4, 6], {}),
    "features.num_bands": (1, {"augment.temporal_jitter_samples": 0}),
    "features.num_electrodes": (8, {}),
    "num_classes": (6, {}),
    "features.norm": ("rolling", {}),
    "features.norm_momentum": (0.7, {}),
    "features.norm_eps": (3.0, {}),
    "features.rolling_window_s": (0.1, {"features.norm": "rolling"}),
    "features.rolling_warmup_s": (0.2, {"features.norm": "rolling"}),
    "features.rolling_per_bin": (True, {"features.norm": "rolling"}),
    "features.input_gain": (1e3, {}),
    "augment.band_rotation": (3, {}),
    "augment.temporal_jitter_samples": (40, {}),
    "augment.amplitude_scale": (0.5, {}),
    "augment.channel_mask_prob": (0.5, {}),
    "augment.electrode_masks": (2, {"augment.electrode_mask_width": 8}),
    "augment.electrode_mask_width": (8, {"augment.electrode_masks": 2}),
    "augment.time_masks": (1, {}),
    "augment.time_mask_frames": (5, {}),
    "augment.freq_masks": (0, {}),
    "augment.freq_mask_bins": (9, {}),
    "augment.iid_masks": (False, {}),
    "augment.mask_value": (4.0, {}),
    "frontend.kind": ("flatten", {}),
    "frontend.mlp_features": ([16, 24], {}),
    "frontend.offsets": ([0], {}),
    "frontend.pooling": ("max", {}),
    "frontend.dropout": (0.3, {}),
    "tds.block_channels": ([4, 8], {}),
    "tds.kernel_width": (3, {}),
    "tds.dropout": (0.3, {}),
    "tds.feature_order": ("width_major", {}),
    **{f"rnn.{k}": (v, {"arch": "gru"}) for k, v in
       {"hidden_size": 8, "num_layers": 1, "bidirectional": True, "dropout": 0.3}.items()},
    **{f"cnn_rnn.{k}": (v, {"arch": "cnn_rnn", "cnn_rnn.bidirectional": False}) for k, v in
       {"conv_channels": [12, 16], "kernel_size": 3, "strides": [1, 2], "causal": True, "rnn_type": "lstm",
        "hidden_size": 8, "num_layers": 1, "dropout": 0.3}.items()},
    "cnn_rnn.bidirectional": (False, {"arch": "cnn_rnn"}),
    **{f"s4d.{k}": (v, {"arch": "s4d"}) for k, v in
       {"d_model": 12, "d_state": 4, "num_layers": 1, "kernel_size": 6, "stride": 4, "dt_min": 0.01, "dt_max": 0.5,
        "prenorm": True, "dropout": 0.3}.items()},
    **{f"splash.{k}": (v, {"arch": "splash", "frontend.kind": "flatten"}) for k, v in
       {"mlp_features": [8, 16], "offsets": [0], "pooling": "max", "block_channels": [8, 8], "kernel_width": 3,
        "dropout": 0.3, "mirror_right": True}.items()},
}
ATTN_CHANGES = {"d_model": 48, "num_layers": 1, "num_heads": 4, "ffn_dim": 32, "dropout": 0.3,
                "subsampling_strides": [1], "subsampling_kernel": 5, "attention": "full", "left_frames": 2,
                "right_frames": 1, "causal": True, "rope_base": 50.0}
for _arch in ("conformer", "transformer"):
    FIELD_CHANGES.update({f"{_arch}.{k}": (v, {"arch": _arch}) for k, v in ATTN_CHANGES.items()})
    FIELD_CHANGES[f"{_arch}.chunk_frames"] = (3, {"arch": _arch, f"{_arch}.attention": "chunk"})
    FIELD_CHANGES[f"{_arch}.left_chunks"] = (0, {"arch": _arch, f"{_arch}.attention": "chunk"})
FIELD_CHANGES["conformer.conv_kernel"] = (3, {"arch": "conformer"})
FIELD_BASE = {"frontend": {"mlp_features": [16]}, "tds": {"block_channels": [8, 8], "kernel_width": 4},
              "splash": {"mlp_features": [16], "block_channels": [4, 8], "kernel_width": 4},
              "rnn": {"hidden_size": 12, "num_layers": 2},
              "cnn_rnn": {"conv_channels": [16, 16], "hidden_size": 12},
              "conformer": {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 5,
                            "left_frames": 6, "right_frames": 3, "chunk_frames": 6},
              "transformer": {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "left_frames": 6,
                              "right_frames": 3, "chunk_frames": 6},
              "s4d": {"d_model": 16, "d_state": 8, "num_layers": 2, "kernel_size": 5, "stride": 5},
              "augment": {"amplitude_scale": 0.1, "channel_mask_prob": 0.1}}


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaf_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _set(data: dict, path: str, value: typing.Any) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def _fingerprint(data: dict) -> list[torch.Tensor | str]:
    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, data)
    model = build_model(cfg)
    x, lengths = rand_emg(4, 1400), torch.tensor([1400, 1100, 1400, 1300])
    x = x[:, :, : cfg.features.num_bands, : cfg.features.num_electrodes]  # the input shape the config declares
    out: list[torch.Tensor | str] = [str([(n, tuple(p.shape)) for n, p in model.named_parameters()])]
    with torch.no_grad():
        out.append(model.eval()(x, lengths)[0])
        torch.manual_seed(1)
        out.append(model.train()(x, lengths)[0])
        out.append(model.eval()(x, lengths)[0])  # after one update of running statistics
    return out


def _differs(a: list, b: list) -> bool:
    return any(type(u) is not type(v) or (u != v if isinstance(u, str) else u.shape != v.shape or not torch.allclose(u, v))
               for u, v in zip(a, b))


def test_every_config_field_reaches_the_model() -> None:
    """Changing any single ModelConfig field (listed for every field) changes the built model or its outputs."""
    assert sorted(FIELD_CHANGES) == sorted(_leaf_paths(ModelConfig))
    for path, (value, context) in FIELD_CHANGES.items():
        base = yaml.safe_load(yaml.safe_dump(FIELD_BASE))
        for k, v in context.items():
            _set(base, k, v)
        changed = yaml.safe_load(yaml.safe_dump(base))
        _set(changed, path, value)
        assert _differs(_fingerprint(base), _fingerprint(changed)), f"{path}={value!r} changed nothing"


def test_dropout_values_arrive_in_modules() -> None:
    """Each arch's dropout setting is the p of every dropout module its encoder builds."""
    for arch, section in (("tds", "tds"), ("lstm", "rnn"), ("cnn_rnn", "cnn_rnn"), ("conformer", "conformer"),
                          ("transformer", "transformer"), ("s4d", "s4d")):
        data = yaml.safe_load(yaml.safe_dump(FIELD_BASE))
        data["arch"] = arch
        data[section]["dropout"] = 0.37
        model = build_model(from_dict(ModelConfig, data))
        ps = [m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)]
        assert ps and all(p == pytest.approx(0.37) for p in ps), (arch, ps)


@pytest.mark.parametrize("name", ["tds", "bigru", "conformer", "transformer_chunk", "s4d"])
def test_bf16_autocast_trains(name: str) -> None:
    """Under CPU bf16 autocast the log-probs are float32, close to fp32, and a CTC backward works."""
    model = tiny_model(name)
    x, lengths = rand_emg(2, 1600), torch.tensor([1600, 1300])
    with torch.no_grad():
        ref, _ = model(x, lengths)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, out_lengths = model(x, lengths)
        loss = F.ctc_loss(lp.transpose(0, 1), torch.randint(0, 98, (2, 5)), out_lengths, torch.tensor([5, 4]),
                          blank=98, zero_infinity=True)
    assert lp.dtype == torch.float32 and bool(torch.isfinite(lp).all())
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all())
               for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = model(x, lengths)
    assert (low.exp() - ref.exp()).abs().max() < 0.1


@pytest.mark.parametrize("block_channels", [[4, 4], [4, 6]])
def test_tds_encoder_computes_the_reference_function(block_channels: list[int]) -> None:
    """The TDS encoder, fed and read in the reference's channel-major order, equals the reference's
    channel-major TDS (Conv2d kernel (1, K) on (N, C, W, T)) with each block's weights mapped by its order."""
    torch.manual_seed(0)
    K, T, F_ = 5, 30, 24
    enc = TDSConvEncoder(F_, TDSConfig(block_channels=block_channels, kernel_width=K)).eval()
    for p in enc.parameters():  # LayerNorm weights away from 1 / 0, so a wrong order shows
        p.data.normal_(0.0, 0.5)

    def ref_vec(v: torch.Tensor, c: int) -> torch.Tensor:  # ours: position w*C+c holds reference c*W+w
        return v.view(F_ // c, c).T.reshape(F_)

    def ref_mat(m: torch.Tensor, c: int) -> torch.Tensor:
        return m.view(F_ // c, c, F_ // c, c).permute(1, 0, 3, 2).reshape(F_, F_)

    def reference(x: torch.Tensor) -> torch.Tensor:  # x (T, N, F) in the reference's order
        for i, c in enumerate(block_channels):
            conv, fc = enc.tds_conv_blocks[2 * i], enc.tds_conv_blocks[2 * i + 1]
            n = x.shape[1]
            h = x.movedim(0, -1).reshape(n, c, F_ // c, -1)
            h = torch.relu(F.conv2d(h, conv.conv2d.weight.permute(0, 1, 3, 2), conv.conv2d.bias))
            h = h.reshape(n, F_, -1).movedim(-1, 0)
            x = F.layer_norm(h + x[-h.shape[0]:], (F_,), ref_vec(conv.layer_norm.weight, c), ref_vec(conv.layer_norm.bias, c))
            l1, l2 = fc.fc_block[0], fc.fc_block[2]
            z = F.linear(torch.relu(F.linear(x, ref_mat(l1.weight, c), ref_vec(l1.bias, c))), ref_mat(l2.weight, c),
                         ref_vec(l2.bias, c))
            x = F.layer_norm(x + z, (F_,), ref_vec(fc.layer_norm.weight, c), ref_vec(fc.layer_norm.bias, c))
        return x

    x_ref = torch.randn(T, 2, F_)
    with torch.no_grad():
        ours, _ = enc(x_ref.transpose(0, 1).contiguous(), torch.tensor([T, T]))
        theirs = reference(x_ref)
    torch.testing.assert_close(ours, theirs.transpose(0, 1), atol=1e-4, rtol=1e-4)


def test_tds_width_major_order_is_another_function() -> None:
    """tds.feature_order=width_major (emgscale's pre-reference order) computes a different function with the same weights."""
    torch.manual_seed(0)
    a = TDSConvEncoder(24, TDSConfig(block_channels=[4, 4], kernel_width=5)).eval()
    b = TDSConvEncoder(24, TDSConfig(block_channels=[4, 4], kernel_width=5, feature_order="width_major")).eval()
    b.load_state_dict(a.state_dict())
    x, lengths = torch.randn(2, 30, 24), torch.tensor([30, 30])
    with torch.no_grad():
        assert (a(x, lengths)[0] - b(x, lengths)[0]).abs().max() > 0.1
    with pytest.raises(ValueError, match="tds.feature_order"):
        TDSConvEncoder(24, TDSConfig(feature_order="band_major"))


def test_rotation_mlp_equals_explicit_rolls() -> None:
    """The rolled-weight first layer equals the reference: MLP on stacked rolled inputs, mean over rotations."""
    torch.manual_seed(0)
    mlp = RotationInvariantMLP(16, 5, [12, 7], [-1, 0, 1], "mean")
    x = torch.randn(2, 9, 16, 5)
    stacked = torch.stack([x.roll(o, dims=2) for o in (-1, 0, 1)], 2).flatten(3)  # (B, T, R, C*K)
    torch.testing.assert_close(mlp(x), mlp.mlp(stacked).mean(2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask", [AttentionMask("local", 7, 3), AttentionMask("local", 40, 0, causal=True),
                                  AttentionMask("chunk", chunk_frames=5, left_chunks=2),
                                  AttentionMask("chunk", chunk_frames=4, left_chunks=1, causal=True)])
def test_blocked_attention_equals_dense_masked_attention(mask: AttentionMask) -> None:
    """Blocked local/chunk attention equals dense attention with the same (T, T) mask, for valid queries."""
    torch.manual_seed(0)
    B, H, T, D = 2, 2, 97, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    lengths = torch.tensor([97, 60])
    out = mask.attend(q, k, v, lengths)
    pos = torch.arange(T)
    allowed = mask._allowed(pos[:, None], pos[None, :])
    for b in range(B):
        n = int(lengths[b])
        dense = F.scaled_dot_product_attention(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                               attn_mask=allowed[:n, :n])
        torch.testing.assert_close(out[b:b + 1, :, :n], dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_encoder_streaming_step_equals_its_forward_or_says_why_not(name: str) -> None:
    """A causal encoder's streaming_forward, fed its input in pieces, gives its forward (after
    stream_skip_frames); any other raises NotStreamable from init_state."""
    enc = tiny_model(name).encoder
    if name not in STREAMABLE:
        with pytest.raises(NotStreamable):
            enc.init_state()
        return
    s = enc.subsampling
    x = torch.randn(1, 40 * s, enc.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, n = enc(x, torch.tensor([x.shape[1]]))
        state, pos, out = enc.init_state(), torch.zeros((), dtype=torch.long), []
        for a, b in ((0, s), (s, 8 * s), (8 * s, 9 * s), (9 * s, 40 * s)):
            y, *state = enc.streaming_forward(x[:, a:b], pos, *state)
            out.append(y)
            pos = pos + y.shape[1]
        with pytest.raises(ValueError, match="state tensors"):
            enc.streaming_forward(x[:, :s], pos, *state[:-1])
    got = torch.cat(out, 1)[:, enc.stream_skip_frames:]
    torch.testing.assert_close(got, ref[:, :int(n[0])], atol=1e-5, rtol=0)


def test_unknown_arch_and_bad_settings_raise() -> None:
    """An unknown arch or an impossible setting raises ValueError naming it."""
    with pytest.raises(ValueError, match="arch"):
        build_model(ModelConfig(arch="wavenet"))
    with pytest.raises(ValueError, match="block_channels"):
        build_model(from_dict(ModelConfig, {"tds": {"block_channels": [25]}}))
    with pytest.raises(ValueError, match="causal"):
        build_model(from_dict(ModelConfig, {"arch": "cnn_rnn", "cnn_rnn": {"causal": True}}))
    with pytest.raises(ValueError, match="shorter"):
        build_model(ModelConfig())(rand_emg(1, 1000), torch.tensor([1000]))
    with pytest.raises(ValueError, match="s4d.d_state"):
        build_model(from_dict(ModelConfig, {"arch": "s4d", "s4d": {"d_state": 7}}))
    assert set(ENCODERS) >= {"tds", "lstm", "gru", "cnn_rnn", "conformer", "transformer", "s4d"}
