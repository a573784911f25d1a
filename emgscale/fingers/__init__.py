"""Frame-level EMG classification for a small armband (the course's 8-channel 200 Hz finger dataset).

* :mod:`emgscale.fingers.reader` — CSV/TSV "time + N channels + label per row" files, LibEMG's
  one-file-per-class-and-repetition layout, splits of a folder of recordings.
* :mod:`emgscale.fingers.device` — emg2qwerty data as an 8-channel 200 Hz band would record it
  (pre-training input), and the anti-aliased resampler.
* :mod:`emgscale.fingers.synth` — a synthetic finger dataset in the CSV format
  (``python -m emgscale.synth fingers``).
* :mod:`emgscale.fingers.evaluate` — per-time-point accuracy, balanced accuracy, macro-F1, confusion.
* :mod:`emgscale.fingers.bench` — the ``fingers`` benchmark (scratch vs pre-trained vs minutes of data).
* ``python -m emgscale.fingers`` — train / evaluate on a folder of CSVs.

Training uses the one loop with ``loss.kind: frame_ce`` (:mod:`emgscale.train.frames`) and
``data.format: csv`` (:mod:`emgscale.loader.csv`). This package file imports nothing, so the loaders
can use the reader without importing the rest.
"""
