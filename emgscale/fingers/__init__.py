"""Frame-level EMG classification for a small armband (the course's 8-channel 200 Hz finger dataset).

* (data layer) :mod:`emgscale.data.tables` — CSV/TSV "time + N channels + label per row" files, LibEMG's
  one-file-per-class-and-repetition layout, splits of a folder of recordings.
* (data layer) :mod:`emgscale.data.device` — emg2qwerty data as an 8-channel 200 Hz band would record it
  (pre-training input), and the anti-aliased resampler.
* :mod:`emgscale.synth.fingers` — a synthetic finger dataset in the CSV format
  (``python -m emgscale.synth fingers``).
* :mod:`emgscale.fingers.evaluate` — per-time-point accuracy, balanced accuracy, macro-F1, confusion.
* :mod:`emgscale.bench.fingers` — the ``fingers`` benchmark (scratch vs pre-trained vs minutes of data), a
  suite of ``python -m emgscale.bench`` like the others.
* ``python -m emgscale.fingers`` — train / evaluate on a folder of CSVs.

Training uses the one loop with ``loss.kind: frame_ce`` (:mod:`emgscale.train.frames`) and
``data.format: csv`` (:mod:`emgscale.loader.csv`). The reader and the device view belong to the data
layer (the loaders use them); this package holds what sits above training.
"""
