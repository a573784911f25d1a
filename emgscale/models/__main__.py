"""``python -m emgscale.models import-reference CKPT --out OUT.pt`` | ``import-braindecode STATE.pt --out OUT.pt``
| ``export CKPT --to reference|braindecode --out OUT``.

``import-reference`` reads a reference (emg2qwerty / PyTorch Lightning) ``TDSConvCTCModule`` checkpoint,
such as Meta's released ``models/generic.ckpt``, without running pickled code, and writes an ordinary
emgscale checkpoint (weights, resolved config, step, epoch) that ``python -m emgscale.eval`` and
``run.init_from`` take. ``import-braindecode`` does the same for a braindecode ``EMG2QwertyNet`` state
dict (the hub's ``pytorch_model.bin``, or a folder holding it and ``config.json``); its constructor
arguments come from ``--kwargs FILE.json`` (else ``STATE.json`` / ``config.json`` beside it, else
braindecode's defaults), and ``--arg name=value`` (a JSON value) wins over them. ``export --to
reference`` writes an emgscale TDS checkpoint as a Lightning checkpoint the reference loads (``python -m
emg2qwerty.train checkpoint=OUT.ckpt ...``); ``export --to braindecode`` writes ``OUT`` (the state dict:
``EMG2QwertyNet(**kwargs).load_state_dict(torch.load(OUT))``) and ``OUT`` with suffix ``.json`` (the kwargs).
``upgrade-legacy OLD.pt --out NEW.pt --i-trust-this-file`` converts a checkpoint written before format 2
(numpy RNG state inside), which every other command refuses to open
(:func:`emgscale.models.checkpoint.upgrade_legacy_checkpoint`).
"""

from __future__ import annotations

import argparse
import json
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
        ref: what :func:`~emgscale.models.reference.read_reference` (or
            :func:`~emgscale.models.braindecode.read_braindecode`) returned.
        source: recorded as the checkpoint's ``source``.
    """
    from emgscale.models.checkpoint import Checkpoint, save_checkpoint
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


def parse_args(pairs: list[str]) -> dict[str, object]:
    """``["pooling=max", "rotation_offsets=[-2,0,2]"]`` -> kwargs; each value is JSON, else a string.

    Raises:
        ValueError: an item without ``=``.
    """
    out: dict[str, object] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise ValueError(f"--arg {pair!r}: expected name=value")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def _import_braindecode(a: argparse.Namespace) -> None:
    from emgscale.models.braindecode import read_braindecode

    ref = read_braindecode(a.state_dict, a.kwargs, parse_args(a.arg))
    out = save_imported(a.out, ref, source=f"braindecode:{a.state_dict}")
    m = ref.model_cfg
    print(f"[models] {a.state_dict} (EMG2QwertyNet: mlp_features {m.frontend.mlp_features}, block_channels "
          f"{m.tds.block_channels}, kernel_width {m.tds.kernel_width}, {m.frontend.pooling} pooling over "
          f"{m.frontend.offsets}, n_fft {m.features.n_fft}, hop {m.features.hop_samples}) -> {out}")


def _export(a: argparse.Namespace) -> None:
    from emgscale.models.checkpoint import load_checkpoint, load_weights
    from emgscale.common import atomic_torch_save, atomic_write_json
    from emgscale.models import build_model

    ck = load_checkpoint(a.checkpoint)
    model = build_model(ck.model_config())
    load_weights(model, ck.weights(a.weights), a.checkpoint)
    if a.to == "braindecode":
        from emgscale.models.braindecode import CLASS_NAME, export_braindecode

        state, kwargs = export_braindecode(model.eval())
        sidecar = Path(a.out).with_suffix(".json")
        if sidecar == Path(a.out):
            raise ValueError(f"--out {a.out}: the state dict needs a name not ending in .json (the kwargs go there)")
        atomic_torch_save(state, a.out)
        atomic_write_json(sidecar, {"class": CLASS_NAME, "kwargs": kwargs, "source": str(a.checkpoint)})
        print(f"[models] {a.checkpoint} ({a.weights} weights) -> {a.out} + {sidecar} (braindecode EMG2QwertyNet)")
        return
    from emgscale.models.reference import reference_lightning_checkpoint

    out = reference_lightning_checkpoint(model.eval(), epoch=ck.epoch, global_step=ck.step)
    atomic_torch_save(out, a.out)
    print(f"[models] {a.checkpoint} ({a.weights} weights) -> {a.out} (reference TDSConvCTCModule layout)")


def _upgrade(a: argparse.Namespace) -> None:
    from emgscale.models.checkpoint import upgrade_legacy_checkpoint

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
    bd = sub.add_parser("import-braindecode", help="braindecode EMG2QwertyNet state dict -> emgscale checkpoint")
    bd.add_argument("state_dict", help="torch.save'd EMG2QwertyNet state_dict (.pt, pytorch_model.bin) or a hub folder")
    bd.add_argument("--kwargs", help="JSON of constructor arguments ({'kwargs': {...}} or the hub's config.json)")
    bd.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                    help="a constructor argument (JSON value), e.g. pooling=max; wins over the kwargs file")
    bd.add_argument("--out", required=True, help="emgscale checkpoint to write (.pt)")
    exp = sub.add_parser("export", help="emgscale TDS checkpoint -> reference Lightning checkpoint or "
                                        "braindecode state dict")
    exp.add_argument("checkpoint", help="an emgscale checkpoint file or run checkpoint folder")
    exp.add_argument("--to", required=True, choices=["reference", "braindecode"], help="target layout")
    exp.add_argument("--weights", default="model", choices=["model", "averaged"])
    exp.add_argument("--out", required=True,
                     help="file to write: Lightning checkpoint (.ckpt), or braindecode state dict "
                          "(.pt; kwargs beside it as .json)")
    up = sub.add_parser("upgrade-legacy", help="emgscale checkpoint from before format 2 -> today's format")
    up.add_argument("checkpoint", help="the old checkpoint (.pt)")
    up.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    up.add_argument("--i-trust-this-file", action="store_true",
                    help="required: the file's numpy objects are loaded (nothing else it pickles is)")
    a = p.parse_args(argv)
    {"import-reference": _import, "import-braindecode": _import_braindecode, "export": _export,
     "upgrade-legacy": _upgrade}[a.command](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
