"""Seeded synthetic emg2qwerty corpus, written in exactly the official format.

``python -m emgscale.synth --out DIR`` (or :func:`generate_corpus`) writes ``<session>.hdf5`` files,
``metadata.csv`` and the split files ``splits/generic.yaml``, ``splits/user0.yaml``..,
``splits/single_user.yaml``. Nothing in emgscale treats these files differently from real ones.

Signal model (per wrist band, 16 electrodes at 2 kHz)
-----------------------------------------------------
* **Sources.** 14 forearm muscle sources per hand: flexor and extensor compartments of each finger
  and the radial/ulnar wrist flexors and extensors. Each has a superficial and a deep motor-unit
  population. A population fires as an inhomogeneous Poisson process (pooled rate up to ~1 kHz)
  driven by its source's activation above the population's recruitment threshold; spike trains
  are convolved with Hermite-Rodriguez MUAPs (1.3-2.6 ms scale, 20 ms support) by FFT and projected
  onto the electrodes by a (populations x 16) mixing matrix: a von Mises bump around the wrist
  circumference minus a shifted weaker lobe (what a differential electrode sees). Left-hand keys
  drive only the left band's sources, right-hand keys only the right band's.
* **Keys.** Standard touch typing (space by the thumb, shift by the pinky). Each physical key is a
  distinct program over its hand's sources in four phases: a *reach* burst starting 60-140 ms before
  the press (finger extensor, plus wrist radial/ulnar deviators for inner/outer columns and wrist
  flexors/extensors for lower/upper rows), a *press* burst of the finger flexor starting 40-90 ms
  before the logged press (neighbouring fingers co-activate), a weak *hold* while the key is down
  (strong for shift), and a *release* burst of the extensor. Activation therefore starts before
  the logged press and lasts about 100-250 ms; overlapping keys add. A tonic activation with slow
  drift keeps low-threshold units firing at rest.
* **Recording.** White electrode noise (1-2.4 units), 60 Hz mains with 120/180 Hz harmonics,
  electrode pops in sessions tagged ``contact artifact``, then a 4th-order Butterworth 20 Hz
  high-pass (the released data's filter). Units are microvolt-like: the quiet floor is a few units,
  typing bursts tens to a few hundred; the reference log-spectrogram features (n_fft 64) have mean
  0.1-0.6 and variance 0.8-1.3 across users (the released model's input statistics suggest about
  0.5 and 1.15).
* **Typing.** Real English prompts (sentences cut to ~15-48 characters) typed with per-user speed
  and rhythm (faster hand alternation, slower same-finger pairs, word/sentence pauses,
  hesitations, a reading pause per prompt), shift before capitals (``Key.shift`` for right-hand
  characters; ``Key.shift_r`` - dropped by the reference labels - for left-hand ones with a per-user
  probability), typos (neighbour key, double strike, transposition) mostly corrected with
  ``Key.backspace``, ``Key.enter`` after each prompt.

What varies
-----------
* **Per user** (seeded by ``(seed, user)``): where each source projects on each band (band
  placement offset ~N(0, 1) electrode, per-source offsets ~N(0, 0.6)), pattern widths and side
  lobes, MUAP shapes and durations, amplitudes (overall gain ~ x1.35 spread, per source x1.4),
  recruitment thresholds and rates, how each key recruits each source, lead time and burst
  lengths, typing speed (about 35-85 wpm with reading pauses), rhythm, error habits, shift and
  space-thumb habits.
* **Per session** (seeded by ``(seed, user, session index)``): band rotation uniform in +-1
  electrode (fractional, applied to the spatial patterns), per-electrode contact gain (and now and
  then one poorly contacted electrode), band gain, noise level, mains amplitude and phase, tonic
  level, MUAP time stretch, typing speed (+-8 %), which prompts are typed.

Every session depends only on its own seed, so sessions can be generated in parallel
(``--workers``) and the same seed gives the same bytes of EMG.
"""

from emgscale.synth.corpus import CorpusSummary, SynthConfig, ensure_corpus, generate_corpus, make_splits, plan_corpus
from emgscale.synth.session import SessionPlan, SyntheticSession, UserModel, generate_session, make_user, write_session

__all__ = [
    "CorpusSummary", "SessionPlan", "SynthConfig", "SyntheticSession", "UserModel", "ensure_corpus", "generate_corpus",
    "generate_session", "make_splits", "make_user", "plan_corpus", "write_session",
]
