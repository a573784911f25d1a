"""The GPU path: runs only where CUDA exists (CI and the default machine have none, so it skips there).

Covers one training step on the GPU, bf16 (or the fp16 fallback), the loader's pinned-memory defaults,
DDP on 2 processes when there are 2 GPUs, and whole-session evaluation on the GPU.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _overrides(corpus, out, *extra: str) -> list[str]:
    return [f"data.data_root={corpus.root}", f"data.split={corpus.split_path}", "data.window.window_samples=2000",
            "data.batch_size=4", "model.arch=tds", "model.tds.block_channels=[4]", "model.tds.kernel_width=4",
            "model.frontend.mlp_features=[16]", "run.max_epochs=1", "run.steps_per_epoch=3", "run.tensorboard=false",
            "run.ckpt_every_steps=0", f"run.out_dir={out}", *extra]


@pytest.mark.parametrize("bf16", [False, True])
def test_training_steps_on_the_gpu(tiny_corpus, tmp_path, bf16):
    """A run on cuda trains (finite loss), keeps its weights on the GPU and checkpoints them on the CPU."""
    from emgscale.models.checkpoint import load_checkpoint
    from emgscale.train import launch, load_train_config

    cfg = load_train_config([], _overrides(tiny_corpus, tmp_path / "run", "run.device=cuda", f"run.bf16={str(bf16).lower()}"))
    res = launch(cfg)
    assert res.steps == 3 and all(torch.isfinite(torch.tensor(h["val_loss"])) for h in res.history)
    ck = load_checkpoint(res.last_checkpoint)
    assert all(v.device.type == "cpu" for v in ck.model.values())


def test_loader_defaults_on_a_gpu_use_workers_and_pinned_memory():
    """Unset num_workers / pin_memory resolve to worker processes and pinned memory for a cuda process."""
    from emgscale.loader import DataConfig

    d = DataConfig().for_device("cuda")
    assert d.num_workers >= 1 and d.pin_memory is True
    assert DataConfig().for_device("cpu").num_workers == 0


def test_eval_on_the_gpu_matches_the_cpu(tiny_corpus, tmp_path):
    """Whole-session emissions on cuda equal the CPU's within float32 tolerance."""
    from emgscale.eval import split_emissions
    from emgscale.train import launch, load_train_config

    res = launch(load_train_config([], _overrides(tiny_corpus, tmp_path / "run", "run.device=cuda")))
    cpu = split_emissions(res.last_checkpoint, tiny_corpus.root, tiny_corpus.split_path, "test", device="cpu")
    gpu = split_emissions(res.last_checkpoint, tiny_corpus.root, tiny_corpus.split_path, "test", device="cuda")
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(torch.from_numpy(a["log_probs"]), torch.from_numpy(b["log_probs"]),
                                   atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP on GPUs needs 2 of them")
@pytest.mark.ray
def test_ddp_on_two_gpus_through_ray(tiny_corpus, tmp_path):
    """run.workers=2 run.use_gpu=true trains on 2 GPU workers (NCCL) through Ray Train."""
    pytest.importorskip("ray.train")
    from _ray_fixtures import local_ray

    from emgscale.train import launch, load_train_config

    cfg = load_train_config([], _overrides(tiny_corpus, tmp_path / "run", "run.workers=2", "run.use_gpu=true"))
    with local_ray(num_cpus=4):
        res = launch(cfg)
    assert res.world_size == 2 and res.steps == 3
