"""Write a BIDS copy of an HDF5 data root as Meta's ``scripts/convert_to_bids.py`` does, without MNE.

``python -m emgscale.data to-bids HDF5_ROOT BIDS_ROOT`` follows the converter (reference at 3200d91, run
with mne 1.13 / mne-bids 0.20 / pybv 0.8): users of ``metadata.csv`` sorted -> ``sub-01``...; each
user's sessions sorted -> ``ses-01``...; the EMG as BrainVision float32 in µV at 0.1 µV resolution
(``value * 1e7``: the HDF5 values taken as volts); the reference's ground-truth keys as ``key/<name>``
events at the first sample at or after each press; ``text_prompt`` prompts as ``prompt/<text>`` events
(``⏎`` written ``\\n``) from their first to their last sample. Its ``.eeg`` and ``_events.tsv`` are
byte-identical to the converter's (tested on ``../shared/emg2qwerty-bids``). Used to test the BIDS
reader on any corpus, and by users who want the BIDS layout without installing MNE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emgscale.common import atomic_path, atomic_write_text
from emgscale.data.bids import CHANNEL_NAMES, KEY_PREFIX, PROMPT_PREFIX
from emgscale.data.charset import ENTER, charset
from emgscale.data.errors import DataError
from emgscale.data.session import ON_KEYBOARD, EMGSession
from emgscale.data.splits import METADATA_CSV, bids_names, read_metadata

SAMPLE_RATE_HZ = 2000.0  # the converter's constant
RESOLUTION_UV = 0.1  # MNE's BrainVision export resolution, in µV
COUNTS_PER_VALUE = 1e6 * (1.0 / RESOLUTION_UV)  # pybv: volts -> µV, then / resolution


def _events(s: EMGSession, times: np.ndarray) -> list[tuple[float, float, str, int]]:
    """``(onset_s, duration_s, trial_type, sample)`` as the converter's MNE annotations, sorted by onset."""
    cs, n = charset(), len(times)
    label = s.ground_truth(s.start_time, s.end_time)
    idx = np.minimum(np.searchsorted(times, label.timestamps), n - 1)
    rel = np.arange(n) / SAMPLE_RATE_HZ  # raw.times
    out = [(float(rel[i]), 0.0, KEY_PREFIX + cs.keys[cs.char_to_label(c)], int(i)) for i, c in zip(idx, label.text)]
    for p in s.prompts:
        if p.get("name") != "text_prompt" or not p.get("payload"):
            continue
        a, b = (min(int(np.searchsorted(times, p[k])), n - 1) for k in ("start", "end"))
        text = str(p["payload"].get("text", "")).replace(ENTER, "\\n")
        out.append((float(rel[a]), float(rel[b] - rel[a]), PROMPT_PREFIX + text, a))
    return sorted(out, key=lambda e: e[0])


def _vhdr(stem: str, nchan: int) -> str:
    chans = "\n".join(f"Ch{i + 1}={name},,{RESOLUTION_UV:g},µV" for i, name in enumerate(CHANNEL_NAMES[:nchan]))
    return ("Brain Vision Data Exchange Header File Version 1.0\n; Written using pybv 0.8.1\n\n[Common Infos]\n"
            f"Codepage=UTF-8\nDataFile={stem}.eeg\nMarkerFile={stem}.vmrk\nDataFormat=BINARY\n"
            "; Data orientation: MULTIPLEXED=ch1,pt1, ch2,pt1 ...\nDataOrientation=MULTIPLEXED\n"
            f"NumberOfChannels={nchan}\n; Sampling interval in microseconds\nSamplingInterval={1e6 / SAMPLE_RATE_HZ}\n\n"
            "[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n\n[Channel Infos]\n"
            "; Each entry: Ch<Channel number>=<Name>,<Reference channel name>,\n"
            '; <Resolution in "Unit">,<Unit>, Future extensions..\n'
            "; Fields are delimited by commas, some fields might be omitted (empty).\n"
            '; Commas in channel names are coded as "\\1".\n' + chans + "\n\n[Comment]\n\n")


def _vmrk(stem: str, events: list[tuple[float, float, str, int]], codes: dict[str, int]) -> str:
    marks = "".join(f"Mk{k + 1}=Stimulus,S{codes[e[2]]:>3},{e[3] + 1},1,0\n" for k, e in enumerate(events))
    return ("Brain Vision Data Exchange Marker File, Version 1.0\n; Exported using pybv 0.8.1\n\n[Common Infos]\n"
            f"Codepage=UTF-8\nDataFile={stem}.eeg\n\n[Marker Infos]\n"
            "; Each entry: Mk<Marker number>=<Type>,<Description>,<Position in data points>,\n"
            ";             <Size in data points>, <Channel number (0 = marker is related to all channels)>\n"
            ";             <Date (YYYYMMDDhhmmssuuuuuu)>\n"
            "; Fields are delimited by commas, some fields might be omitted (empty).\n"
            '; Commas in type or description text are coded as "\\1".\n' + marks)


def export_session(session_file: "str | Path", bids_root: "str | Path", subject: int, session: int) -> Path:
    """Write one HDF5 session as ``sub-<subject>/ses-<session>`` (1-based numbers); returns the ``.vhdr``.

    Raises:
        DataError: the session is unreadable or not an ``on_keyboard`` session (the converter's only kind).
    """
    sub, ses = f"sub-{subject:02d}", f"ses-{session:02d}"
    folder = Path(bids_root) / sub / ses / "eeg"
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{sub}_{ses}_task-emg2qwerty"
    with EMGSession(session_file) as s:
        if s.condition != ON_KEYBOARD:
            raise DataError(s.path, f"condition is {s.condition!r}; the converter writes on_keyboard sessions only")
        times = s.time()
        events = _events(s, times)
        with atomic_path(folder / f"{base}_eeg.eeg") as tmp, open(tmp, "wb") as fh:
            for start, emg, _ in s.iter_chunks():
                counts = emg.reshape(len(emg), -1).astype(np.float64) * COUNTS_PER_VALUE  # (T, 32), µV / 0.1
                fh.write(counts.astype("<f4").tobytes())
    n = len(times)
    codes = {d: i + 1 for i, d in enumerate(sorted({e[2] for e in events}))}
    atomic_write_text(folder / f"{base}_eeg.vhdr", _vhdr(f"{base}_eeg", len(CHANNEL_NAMES)))
    atomic_write_text(folder / f"{base}_eeg.vmrk", _vmrk(f"{base}_eeg", events, codes))
    rows = "".join(f"{o!r}\t{d!r}\t{t}\t{codes[t]}\t{i}\n" for o, d, t, i in events)
    atomic_write_text(folder / f"{base}_events.tsv", "onset\tduration\ttrial_type\tvalue\tsample\n" + rows)
    chans = "".join(f"{c}\tEEG\tµV\t0.0\t{SAMPLE_RATE_HZ / 2}\tElectroEncephaloGram\t{SAMPLE_RATE_HZ}\tgood\tn/a\n"
                    for c in CHANNEL_NAMES)
    atomic_write_text(folder / f"{base}_channels.tsv", "name\ttype\tunits\tlow_cutoff\thigh_cutoff\tdescription\t"
                                                       "sampling_frequency\tstatus\tstatus_description\n" + chans)
    atomic_write_text(folder / f"{base}_eeg.json", json.dumps({
        "TaskName": "emg2qwerty", "Manufacturer": "Brain Products", "PowerLineFrequency": "n/a",
        "SamplingFrequency": SAMPLE_RATE_HZ, "SoftwareFilters": "n/a", "RecordingDuration": (n - 1) / SAMPLE_RATE_HZ,
        "RecordingType": "continuous", "EEGReference": "n/a", "EEGGround": "n/a", "EEGPlacementScheme": "n/a",
        "EEGChannelCount": len(CHANNEL_NAMES), "EOGChannelCount": 0, "ECGChannelCount": 0, "EMGChannelCount": 0,
        "MiscChannelCount": 0, "TriggerChannelCount": 0}, indent=4, ensure_ascii=False))
    atomic_write_text(folder.parent / f"{sub}_{ses}_scans.tsv", f"filename\tacq_time\neeg/{base}_eeg.vhdr\tn/a\n")
    return folder / f"{base}_eeg.vhdr"


def export_bids(data_root: "str | Path", bids_root: "str | Path", copy_metadata: bool = False) -> list[Path]:
    """Write the BIDS copy of every session of ``data_root/metadata.csv``, numbered by the converter's rule.

    Args:
        data_root: an HDF5 data root with its ``metadata.csv``.
        bids_root: the output folder (created).
        copy_metadata: also put ``metadata.csv`` in the copy (Meta's converter does not; then the copy
            needs no ``--bids-metadata``).

    Returns:
        The ``.vhdr`` of each session written, in ``sub``/``ses`` order.

    Raises:
        DataError: a missing metadata file or session file, or a session the converter cannot write.
    """
    data_root, bids_root = Path(data_root), Path(bids_root)
    rows = read_metadata(data_root / METADATA_CSV)
    written = []
    for name, row in bids_names(rows).items():
        sub, ses = (int(part.split("-")[1]) for part in name.split("_"))
        path = data_root / f"{row.session}.hdf5"
        if not path.is_file():
            raise DataError(path, f"named by {data_root / METADATA_CSV} but missing")
        written.append(export_session(path, bids_root, sub, ses))
    subjects = sorted({p.name.split("_")[0] for p in written})
    atomic_write_text(bids_root / "participants.tsv", "participant_id\tage\tsex\thand\tweight\theight\n"
                      + "".join(f"{s}\tn/a\tn/a\tn/a\tn/a\tn/a\n" for s in subjects))
    atomic_write_text(bids_root / "dataset_description.json", json.dumps(
        {"Name": "emg2qwerty", "BIDSVersion": "1.9.0", "DatasetType": "raw",
         "GeneratedBy": [{"Name": "emgscale.data to-bids (as convert_to_bids.py)"}]}, indent=4))
    if copy_metadata:
        atomic_write_text(bids_root / METADATA_CSV, (data_root / METADATA_CSV).read_text())
    return written
