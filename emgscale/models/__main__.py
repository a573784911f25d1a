"""``python -m emgscale.models import-reference CKPT --out OUT.pt`` | ``export CKPT --to reference --out OUT.ckpt``.

``import-reference`` reads a reference (emg2qwerty / PyTorch Lightning) ``TDSConvCTCModule`` checkpoint,
such as Meta's released ``models/generic.ckpt``, without running pickled code, and writes an ordinary
emgscale checkpoint (weights, resolved config, step, epoch) that ``python -m emgscale.eval`` and
``run.init_from`` take. ``export`` writes an emgscale TDS checkpoint as a Lightning checkpoint the
reference loads (``python -m emg2qwerty.train checkpoint=OUT.ckpt ...``). ``upgrade-legacy OLD.pt --out NEW.pt
--i-trust-this-file`` converts a checkpoint written before format 2 (numpy RNG state inside), which
every other command refuses to open (:func:`emgscale.checkpoint.upgrade_legacy_checkpoint`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from emgscale.cli import cli

if TYPE_CHECKING:
    from emgscale.models.reference import ReferenceCheckpoint


def save_imported(path: "str | Path", ref: "ReferenceCheckpoint", source: str = "reference") -> Path:
    """Write a :class:`~emgscale.models.reference.ReferenceCheckpoint` as an emgscale checkpoint.

    Kept to this one function: the emgscale checkpoint schema is written here and nowhere else in
    this module.

    Args:
        path: the ``.pt`` file to write (atomically).
        ref: what :func:`~emgscale.models.reference.read_reference` returned.
    """
    from emgscale.checkpoint import Checkpoint, save_checkpoint
    from emgscale.config import to_dict

    # The model section is all a reference checkpoint defines; the rest of the training config takes
    # its defaults when the checkpoint is read (a weights-only checkpoint: fine-tune it, don't resume it).
    return save_checkpoint(path, Checkpoint(model=ref.state_dict, config={"model": to_dict(ref.model_cfg)},
                                            step=ref.global_step, epoch=ref.epoch, source=source))


def _import(a: argparse.Namespace) -> None:
    from emgscale.models.reference import read_reference

    ref = read_reference(a.checkpoint)
    out = save_imported(a.out, ref, source=f"reference:{a.checkpoint}")
    t = ref.model_cfg.tds
    print(f"[models] {a.checkpoint} (reference TDS: mlp_features {ref.model_cfg.frontend.mlp_features}, "
          f"block_channels {t.block_channels}, kernel_width {t.kernel_width}; epoch {ref.epoch}, "
          f"step {ref.global_step}) -> {out}")


def _export(a: argparse.Namespace) -> None:
    from emgscale.checkpoint import load_checkpoint
    from emgscale.common import atomic_torch_save
    from emgscale.config import from_dict
    from emgscale.models import ModelConfig, build_model
    from emgscale.models.reference import reference_lightning_checkpoint

    ck = load_checkpoint(a.checkpoint)
    model = build_model(from_dict(ModelConfig, ck.config.get("model", {}), "model"))
    model.load_state_dict(ck.weights(a.weights))
    out = reference_lightning_checkpoint(model.eval(), epoch=ck.epoch, global_step=ck.step)
    atomic_torch_save(out, a.out)
    print(f"[models] {a.checkpoint} ({a.weights} weights) -> {a.out} (reference TDSConvCTCModule layout)")


def _upgrade(a: argparse.Namespace) -> None:
    from emgscale.checkpoint import upgrade_legacy_checkpoint

    if not a.i_trust_this_file:
        raise ValueError(f"{a.checkpoint}: upgrade-legacy loads numpy objects from the file; add "
                         "--i-trust-this-file if you trust where it came from")
    out = upgrade_legacy_checkpoint(a.checkpoint, a.out)
    print(f"[models] {a.checkpoint} (format 1) -> {out}")


@cli("python -m emgscale.models")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emgscale.models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import-reference", help="reference Lightning checkpoint -> emgscale checkpoint")
    imp.add_argument("checkpoint", help="the reference .ckpt (e.g. emg2qwerty's models/generic.ckpt)")
    imp.add_argument("--out", required=True, help="emgscale checkpoint to write (.pt)")
    exp = sub.add_parser("export", help="emgscale TDS checkpoint -> reference Lightning checkpoint")
    exp.add_argument("checkpoint", help="an emgscale checkpoint file or run checkpoint folder")
    exp.add_argument("--to", required=True, choices=["reference"], help="target layout")
    exp.add_argument("--weights", default="model", choices=["model", "averaged"])
    exp.add_argument("--out", required=True, help="Lightning checkpoint to write (.ckpt)")
    up = sub.add_parser("upgrade-legacy", help="emgscale checkpoint from before format 2 -> today's format")
    up.add_argument("checkpoint", help="the old checkpoint (.pt)")
    up.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    up.add_argument("--i-trust-this-file", action="store_true",
                    help="required: the file's numpy objects are loaded (nothing else it pickles is)")
    a = p.parse_args(argv)
    {"import-reference": _import, "export": _export, "upgrade-legacy": _upgrade}[a.command](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
