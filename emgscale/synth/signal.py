"""The EMG signal model: forearm muscle sources, motor-unit firing, electrodes around each wrist.

Per hand there are 14 muscle sources (flexor and extensor compartments of each finger, and the
four wrist flexors/extensors), each in two motor-unit populations (superficial: sharp spatial bump,
short MUAPs, recruited first; deep: broad bump, longer MUAPs, recruited at higher drive). A
population fires as an inhomogeneous Poisson process whose rate follows its source's activation
above the population's recruitment threshold; its spike train is convolved with its MUAP
(Hermite-Rodriguez shape) and projected onto the 16 electrodes of that wrist's band by a smooth
spatial pattern (a von Mises bump around the circumference minus a shifted, weaker lobe, as a
differential electrode sees it). See :mod:`emgscale.synth` for what varies per user and per session.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from scipy import fft as sp_fft
from scipy import signal as sp_signal

from emgscale.synth.keyboard import KEY_SHIFT, KEY_SHIFT_R, THUMB, key_place, physical_key, physical_keys

SAMPLE_RATE_HZ = 2000.0
NUM_BANDS, NUM_ELECTRODES = 2, 16
SOURCES = (
    "flex_thumb", "flex_index", "flex_middle", "flex_ring", "flex_pinky",
    "ext_thumb", "ext_index", "ext_middle", "ext_ring", "ext_pinky",
    "wrist_flex_radial", "wrist_flex_ulnar", "wrist_ext_radial", "wrist_ext_ulnar",
)
NUM_SOURCES = len(SOURCES)
FLEX0, EXT0, FCR, FCU, ECR, ECU = 0, 5, 10, 11, 12, 13
NUM_POPULATIONS = 2  # superficial, deep
# Where each source lies around the right wrist, as a fraction of the circumference (the left band
# sees the mirror image): flexors on the palm side, extensors on the back, wrist muscles at the edges.
_CANONICAL_POSITION = np.array([0.06, 0.19, 0.25, 0.31, 0.37, 0.88, 0.81, 0.75, 0.69, 0.63, 0.12, 0.44, 0.94, 0.56])
PHASES = ("reach", "press", "hold", "release")
MUAP_SAMPLES = 41  # 20.5 ms support at 2 kHz
CHUNK_SAMPLES = 1 << 15  # synthesis block (fixed: the random stream must not depend on anything else)
CONTROL_STEP = 8  # activations and firing rates on a 250 Hz grid
PREROLL_SAMPLES = 2000  # synthesised and dropped, so filters and tonic firing are settled at sample 0
HIGHPASS_HZ = 20.0
MAINS_HZ = 60.0


@dataclass
class Anatomy:
    """One user's forearms and movement habits (arrays are indexed [band/hand, population, source]).

    Attributes:
        position: (2, 2, 14) centre of each population's spatial pattern, in electrodes.
        kappa: (2, 2, 14) von Mises concentration (larger = narrower bump).
        neg_ratio, neg_shift: (2, 2, 14) the weaker opposite lobe: relative size and offset (electrodes).
        amplitude_uv: (2, 2, 14) MUAP amplitude (microvolt-like units) at the pattern peak.
        muap: (2, 2, 14, 41) unit-energy MUAP waveforms.
        threshold: (2, 2, 14) recruitment threshold in activation units.
        max_rate_hz: (2, 2, 14) pooled firing rate at full activation.
        tonic: (2, 14) resting activation of each source.
        programs: physical key -> (4, 14) activation of the key's hand in each phase (reach, press,
            hold, release).
        lead_s: median time the reach starts before the press (it ends 10 ms before it); press_pre_s,
            press_s: the press burst starts ``press_pre_s`` before the press and lasts ``press_s``;
            release_s: length of the release burst, which starts 10 ms before the release.
        space_hand: thumb on the space bar.
    """

    position: np.ndarray
    kappa: np.ndarray
    neg_ratio: np.ndarray
    neg_shift: np.ndarray
    amplitude_uv: np.ndarray
    muap: np.ndarray
    threshold: np.ndarray
    max_rate_hz: np.ndarray
    tonic: np.ndarray
    programs: dict[str, np.ndarray]
    lead_s: float
    press_pre_s: float
    press_s: float
    release_s: float
    space_hand: int


@dataclass
class SessionCondition:
    """What changes when the bands are put on again (per session).

    Attributes:
        rotation: (2,) band rotation in electrodes (fractional, about +-1).
        contact_gain: (2, 16) per-electrode contact gain.
        band_gain: (2,) overall gain per band (fit, skin).
        noise_uv: (2, 16) white noise standard deviation per electrode.
        mains_uv: amplitude of the 60 Hz interference; mains_weights (2, 16) per electrode;
            mains_phase (2, 16); mains_harmonics (3,) relative size of 60/120/180 Hz.
        tonic_gain: scale of the resting activity.
        muap_stretch: MUAP time scale (temperature, electrode shift).
        artifacts: ``(time_s, band, electrode, amplitude_uv, tau_s)`` electrode pops (contact artifacts).
    """

    rotation: np.ndarray
    contact_gain: np.ndarray
    band_gain: np.ndarray
    noise_uv: np.ndarray
    mains_uv: float
    mains_weights: np.ndarray
    mains_phase: np.ndarray
    mains_harmonics: np.ndarray
    tonic_gain: float
    muap_stretch: float
    artifacts: list[tuple[float, int, int, float, float]]


def _muap_shape(sigma_samples: float, mix: float) -> np.ndarray:
    """Hermite-Rodriguez MUAP: ``cos(mix)`` first order + ``sin(mix)`` second order, unit energy."""
    t = (np.arange(MUAP_SAMPLES) - MUAP_SAMPLES // 2) / sigma_samples
    g = np.exp(-0.5 * t * t)
    w = np.cos(mix) * (-t * g) + np.sin(mix) * ((1 - t * t) * g)
    return (w / np.sqrt(np.sum(w * w))).astype(np.float32)


def _canonical_program(key: str, space_hand: int, style: dict[str, float]) -> tuple[int, np.ndarray]:
    """The hand and (4, 14) phase activations of a physical key before per-user perturbation."""
    place = key_place(key, space_hand)
    f = place.finger
    up, down = max(-place.dy, 0.0), max(place.dy, 0.0)
    inner, outer = max(place.dx_inner, 0.0), max(-place.dx_inner, 0.0)
    prog = np.zeros((4, NUM_SOURCES))
    reach, press, hold, release = prog
    reach[EXT0 + f] = style["ext"] * (0.3 + 0.4 * up)
    if f == THUMB:
        press[FLEX0] = 1.0
        press[FCR] = 0.1
    else:
        reach[FLEX0 + f] += 0.3 * down
        w = style["wrist"]
        reach[FCR] += w * (0.25 * down + 0.3 * inner)
        reach[FCU] += w * (0.25 * down + 0.3 * outer)
        reach[ECR] += w * (0.2 * up + 0.35 * inner)
        reach[ECU] += w * (0.2 * up + 0.35 * outer)
        press[FLEX0 + f] = 1.0
        for g in (f - 1, f + 1):
            if 1 <= g <= 4:
                press[FLEX0 + g] = style["enslave"]
        press[FCR] += 0.08
        press[FCU] += 0.08
    hold[FLEX0 + f] = 0.5 if key in (KEY_SHIFT, KEY_SHIFT_R) else 0.12
    release[EXT0 + f] = 0.35
    return place.hand, prog


def sample_anatomy(rng: np.random.Generator, space_hand: int) -> Anatomy:
    """Draw one user's anatomy and movement habits.

    Args:
        rng: random source.
        space_hand: the thumb the user presses space with (from the typist profile).
    """
    shape = (NUM_BANDS, NUM_POPULATIONS, NUM_SOURCES)
    canon = _CANONICAL_POSITION * NUM_ELECTRODES
    canon = np.stack([(NUM_ELECTRODES - canon) % NUM_ELECTRODES, canon])  # left band sees the mirror image
    placement = rng.normal(0.0, 1.0, size=(NUM_BANDS, 1))
    src_pos = canon + placement + rng.normal(0.0, 0.6, size=(NUM_BANDS, NUM_SOURCES))
    position = np.stack([src_pos, src_pos + rng.normal(0.0, 0.5, size=src_pos.shape)], axis=1)
    kappa = np.stack([rng.uniform(4.0, 10.0, size=(NUM_BANDS, NUM_SOURCES)),
                      rng.uniform(1.5, 4.0, size=(NUM_BANDS, NUM_SOURCES))], axis=1)
    neg_ratio = rng.uniform(0.1, 0.5, size=shape)
    neg_shift = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1.5, 3.0, size=shape)
    user_gain = rng.lognormal(np.log(150.0), 0.3)
    amplitude = user_gain * rng.lognormal(0.0, 0.35, size=shape) * np.array([1.0, 0.55])[None, :, None]
    sigma_ms = rng.uniform(1.3, 2.6)
    sigmas = sigma_ms * rng.lognormal(0.0, 0.15, size=shape) * np.array([1.0, 1.4])[None, :, None]
    mixes = rng.uniform(0.2, 1.3, size=shape)
    muap = np.stack([_muap_shape(s * SAMPLE_RATE_HZ / 1000.0, m) for s, m in zip(sigmas.ravel(), mixes.ravel())])
    threshold = np.stack([rng.uniform(0.0, 0.06, size=(NUM_BANDS, NUM_SOURCES)),
                          rng.uniform(0.15, 0.35, size=(NUM_BANDS, NUM_SOURCES))], axis=1)
    max_rate = rng.uniform(600.0, 1200.0, size=shape) * np.array([1.0, 0.7])[None, :, None]
    style = {"ext": rng.uniform(0.6, 1.4), "wrist": rng.uniform(0.5, 1.5), "enslave": rng.uniform(0.1, 0.35)}
    source_gain = rng.lognormal(0.0, 0.15, size=(NUM_BANDS, NUM_SOURCES))
    programs = {}
    for key in physical_keys():
        hand, prog = _canonical_program(key, space_hand, style)
        prog = prog * source_gain[hand] * rng.lognormal(0.0, 0.25, size=prog.shape)
        prog[:2] += 0.05 * np.abs(rng.normal(size=(2, NUM_SOURCES))) * (rng.random((2, NUM_SOURCES)) < 0.2)
        programs[key] = prog.astype(np.float32)
    return Anatomy(
        position=position, kappa=kappa, neg_ratio=neg_ratio, neg_shift=neg_shift, amplitude_uv=amplitude,
        muap=muap.reshape(*shape, MUAP_SAMPLES), threshold=threshold, max_rate_hz=max_rate,
        tonic=rng.uniform(0.002, 0.015, size=(NUM_BANDS, NUM_SOURCES)), programs=programs,
        lead_s=float(rng.uniform(0.06, 0.14)), press_pre_s=float(rng.uniform(0.04, 0.09)),
        press_s=float(rng.uniform(0.09, 0.16)), release_s=float(rng.uniform(0.05, 0.09)), space_hand=space_hand,
    )


def sample_condition(rng: np.random.Generator, duration_s: float, contact_artifacts: bool = False) -> SessionCondition:
    """Draw one session's recording condition.

    Args:
        rng: random source.
        duration_s: session length (places contact artifacts).
        contact_artifacts: add electrode pops (sessions tagged ``contact artifact``).
    """
    contact = rng.lognormal(0.0, 0.15, size=(NUM_BANDS, NUM_ELECTRODES))
    noise = rng.uniform(1.0, 2.4) * rng.lognormal(0.0, 0.2, size=(NUM_BANDS, NUM_ELECTRODES))
    if rng.random() < 0.15:  # one electrode with poor contact
        b, e = rng.integers(NUM_BANDS), rng.integers(NUM_ELECTRODES)
        contact[b, e] *= 0.3
        noise[b, e] *= 3.0
    artifacts = []
    if contact_artifacts:
        n = rng.poisson(rng.uniform(1.0, 4.0) * duration_s / 60.0)
        for _ in range(n):
            artifacts.append((float(rng.uniform(0, duration_s)), int(rng.integers(NUM_BANDS)),
                              int(rng.integers(NUM_ELECTRODES)), float(rng.choice([-1, 1]) * rng.uniform(200, 2000)),
                              float(rng.uniform(0.02, 0.3))))
    return SessionCondition(
        rotation=rng.uniform(-1.0, 1.0, size=NUM_BANDS), contact_gain=contact,
        band_gain=rng.lognormal(0.0, 0.15, size=NUM_BANDS), noise_uv=noise,
        mains_uv=float(rng.uniform(0.2, 3.0)), mains_weights=rng.lognormal(0.0, 0.3, size=(NUM_BANDS, NUM_ELECTRODES)),
        mains_phase=rng.normal(0.0, 0.3, size=(NUM_BANDS, NUM_ELECTRODES)) + rng.uniform(0, 2 * np.pi),
        mains_harmonics=np.array([1.0, rng.uniform(0.02, 0.15), rng.uniform(0.1, 0.4)]),
        tonic_gain=float(rng.lognormal(0.0, 0.3)), muap_stretch=float(rng.lognormal(0.0, 0.05)), artifacts=artifacts,
    )


def mixing_matrix(anatomy: Anatomy, cond: SessionCondition) -> np.ndarray:
    """(2, 16, 28) gains from each band's 2 x 14 populations to its electrodes, for one session."""
    e = np.arange(NUM_ELECTRODES)[None, None, None, :]
    d = e - (anatomy.position + cond.rotation[:, None, None])[..., None]  # (2, 2, 14, 16) electrodes
    rad = 2 * np.pi / NUM_ELECTRODES
    bump = np.exp(anatomy.kappa[..., None] * (np.cos(d * rad) - 1))
    lobe = np.exp(anatomy.kappa[..., None] * (np.cos((d - anatomy.neg_shift[..., None]) * rad) - 1))
    pattern = (bump - anatomy.neg_ratio[..., None] * lobe) * anatomy.amplitude_uv[..., None]
    gain = cond.contact_gain * cond.band_gain[:, None]  # (2, 16)
    g = pattern * gain[:, None, None, :]
    return np.ascontiguousarray(g.reshape(NUM_BANDS, NUM_POPULATIONS * NUM_SOURCES, NUM_ELECTRODES).transpose(0, 2, 1))


@lru_cache(maxsize=1)
def highpass_sos() -> np.ndarray:
    """4th-order Butterworth high-pass at 20 Hz (the released data's filter), as second-order sections."""
    return sp_signal.butter(4, HIGHPASS_HZ, btype="highpass", fs=SAMPLE_RATE_HZ, output="sos")


@lru_cache(maxsize=256)
def _hann(n: int) -> np.ndarray:
    return (np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2).astype(np.float32)


def _key_events(anatomy: Anatomy, keystrokes: Sequence[dict[str, Any]], origin_s: float, rate_hz: float,
                rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Activation bursts of every keystroke on a grid of ``rate_hz``: (start bin, length in bins, hand,
    is_flat, vector (14,)), sorted by start. Four per key: reach, press, hold (flat), release."""
    n = len(keystrokes)
    origin_s += (MUAP_SAMPLES // 2) / SAMPLE_RATE_HZ  # spikes lead their MUAP's centre by half its support
    press = np.array([k["start"] for k in keystrokes], dtype=np.float64) - origin_s
    release = np.maximum(np.array([k["end"] for k in keystrokes], dtype=np.float64) - origin_s, press)
    lead = anatomy.lead_s * rng.lognormal(0.0, 0.2, size=n)
    press_len = anatomy.press_s * rng.lognormal(0.0, 0.1, size=n)
    force = rng.lognormal(0.0, 0.15, size=(n, 1, 1))
    hands, vecs = np.empty(n, dtype=np.int64), np.empty((n, 4, NUM_SOURCES), dtype=np.float32)
    for i, k in enumerate(keystrokes):
        key = physical_key(str(k["key"]))
        hands[i] = key_place(key, anatomy.space_hand).hand
        vecs[i] = anatomy.programs[key]
    starts = np.stack([press - lead, press - anatomy.press_pre_s, press, release - 0.01], axis=1)
    lengths = np.stack([lead - 0.01, press_len, release - press, np.full(n, anatomy.release_s)], axis=1)
    start = np.round(starts * rate_hz).astype(np.int64).ravel()
    length = np.maximum(np.round(lengths * rate_hz).astype(np.int64), 1).ravel()
    flat = np.tile(np.array([False, False, True, False]), n)
    vec = (vecs * force).reshape(n * 4, NUM_SOURCES)
    order = np.argsort(start, kind="stable")
    return start[order], length[order], np.repeat(hands, 4)[order], flat[order], vec[order]


def synthesize_emg(
    anatomy: Anatomy,
    cond: SessionCondition,
    keystrokes: Sequence[dict[str, Any]],
    start_s: float,
    num_samples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render a session's EMG for its keystrokes.

    Activations and firing rates live on a 250 Hz control grid (they are smooth at that scale);
    spikes, MUAPs, noise and mains at 2 kHz. Work goes in fixed blocks, so memory stays bounded.

    Args:
        anatomy: the user.
        cond: the session's recording condition.
        keystrokes: ``{"key", "start", "end"}`` objects (unix seconds), sorted by start.
        start_s: unix time of sample 0.
        num_samples: samples to render (at 2 kHz).
        rng: random source, consumed in fixed-size blocks (the result depends on nothing else).

    Returns:
        float32 ``(num_samples, 2, 16)``: band 0 left wrist, band 1 right wrist; 20 Hz high-passed.
    """
    fs, pre, step = SAMPLE_RATE_HZ, PREROLL_SAMPLES, CONTROL_STEP
    total = num_samples + pre
    origin = start_s - pre / fs  # time of extended sample 0
    ev_start, ev_len, ev_hand, ev_flat, ev_vec = _key_events(anatomy, keystrokes, origin, fs / step, rng)
    max_len = int(ev_len.max()) if len(ev_len) else 0
    units = NUM_BANDS * NUM_POPULATIONS * NUM_SOURCES
    gain = mixing_matrix(anatomy, cond).astype(np.float32)  # (2, 16, 28)
    t_muap = np.arange(MUAP_SAMPLES) - MUAP_SAMPLES // 2
    muap = np.stack([np.interp(t_muap / cond.muap_stretch, t_muap, m) for m in anatomy.muap.reshape(units, -1)])
    muap /= np.sqrt((muap ** 2).sum(axis=1, keepdims=True))
    spectra: dict[int, np.ndarray] = {}  # MUAP spectra per FFT length (at most two: full and last block)
    thr = anatomy.threshold[..., None].astype(np.float32)
    rate_scale = (anatomy.max_rate_hz[..., None] / (1.0 - thr) * step / fs).astype(np.float32)  # spikes/bin
    tonic = (anatomy.tonic * cond.tonic_gain)[..., None]
    tonic_hz, tonic_phase = rng.uniform(0.05, 0.5, size=tonic.shape), rng.uniform(0, 2 * np.pi, size=tonic.shape)
    sos = highpass_sos()
    zi = np.zeros((sos.shape[0], NUM_BANDS * NUM_ELECTRODES, 2))
    carry = np.zeros((units, MUAP_SAMPLES - 1), dtype=np.float32)
    harmonics = np.arange(1, 4)
    mains_amp = cond.mains_uv * cond.mains_harmonics[:, None, None] * cond.mains_weights  # (3, 2, 16)
    phase = harmonics[:, None, None] * cond.mains_phase
    # x += M @ [sin w1t, cos w1t, sin w2t, ...]: (32, 6) mains mixing.
    mains_mix = np.stack([mains_amp * np.cos(phase), mains_amp * np.sin(phase)], axis=1).reshape(6, -1).T
    mains_mix = np.ascontiguousarray(mains_mix, dtype=np.float32)
    noise_sd = cond.noise_uv.reshape(-1, 1).astype(np.float32)
    out = np.empty((num_samples, NUM_BANDS, NUM_ELECTRODES), dtype=np.float32)
    for c0 in range(0, total, CHUNK_SAMPLES):
        c1 = min(c0 + CHUNK_SAMPLES, total)
        n = c1 - c0
        b0, nb = c0 // step, -(-n // step)  # control bins of this block
        # Source activation (2, 14, nb): tonic with slow drift, plus every key burst overlapping the block.
        tb = (b0 + np.arange(nb)) * (step / fs)
        act = (tonic * (1.0 + 0.5 * np.sin(2 * np.pi * tonic_hz * tb + tonic_phase))).astype(np.float32)
        lo, hi = np.searchsorted(ev_start, b0 - max_len), np.searchsorted(ev_start, b0 + nb)
        for i in range(lo, hi):
            s, ln = int(ev_start[i]), int(ev_len[i])
            a, b = max(s, b0), min(s + ln, b0 + nb)
            if a < b:
                env = np.ones(b - a, dtype=np.float32) if ev_flat[i] else _hann(ln)[a - s:b - s]
                act[ev_hand[i], :, a - b0:b - b0] += ev_vec[i][:, None] * env
        # Pooled firing (2, 2, 14, nb) spikes per bin -> spike samples by time rescaling: a spike falls
        # where the cumulative intensity crosses a uniform draw (rate constant within a bin).
        rate = (np.maximum(act[:, None] - thr, 0.0) * rate_scale).reshape(units, nb)
        cum = np.cumsum(rate, axis=1, dtype=np.float64)
        totals = cum[:, -1]
        counts = rng.poisson(totals)
        offsets = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
        unit = np.repeat(np.arange(units), counts)
        target = offsets[unit] + rng.random(len(unit)) * totals[unit]
        flat_cum = (cum + offsets[:, None]).ravel()
        j = np.clip(np.searchsorted(flat_cum, target), unit * nb, unit * nb + nb - 1)
        below = np.where(j > unit * nb, flat_cum[j - 1], offsets[unit])
        frac = (target - below) / np.maximum(flat_cum[j] - below, 1e-12)
        sample = np.minimum((j - unit * nb) * step + (frac * step).astype(np.int64), n - 1)
        spikes = np.bincount(unit * n + sample, minlength=units * n).reshape(units, n).astype(np.float32)
        # MUAP convolution (FFT, overlap-add across blocks), then projection onto the electrodes.
        nfft = sp_fft.next_fast_len(n + MUAP_SAMPLES - 1, real=True)
        if nfft not in spectra:
            spectra[nfft] = sp_fft.rfft(muap, nfft, axis=1).astype(np.complex64)
        y = sp_fft.irfft(sp_fft.rfft(spikes, nfft, axis=1) * spectra[nfft], nfft, axis=1)
        y = y[:, :n + MUAP_SAMPLES - 1]
        y[:, :MUAP_SAMPLES - 1] += carry
        carry = y[:, n:].copy()
        y = y[:, :n].reshape(NUM_BANDS, NUM_POPULATIONS * NUM_SOURCES, n)
        # einsum, not matmul: BLAS sums in an order that depends on its thread count, and the corpus
        # must come out bit for bit the same in a 1-thread worker process and a multi-threaded one.
        x = np.einsum("bek,bkn->ben", gain, y).reshape(NUM_BANDS * NUM_ELECTRODES, n)  # (32, n)
        # Recording: electrode noise, mains interference, contact pops; then the 20 Hz high-pass.
        x += noise_sd * rng.standard_normal((NUM_BANDS * NUM_ELECTRODES, n), dtype=np.float32)
        t = (c0 + np.arange(n)) / fs  # seconds since the extended origin
        w = 2 * np.pi * MAINS_HZ * harmonics[:, None] * t
        basis = np.stack([np.sin(w), np.cos(w)], axis=1).reshape(6, n).astype(np.float32)
        x += np.einsum("ek,kn->en", mains_mix, basis)  # (not BLAS: see above)
        for when, band, electrode, amp, tau in cond.artifacts:
            a = int((when + pre / fs) * fs)
            if a < c1 and a + int(8 * tau * fs) > c0:
                tt = t[max(a - c0, 0):] - (a / fs)
                x[band * NUM_ELECTRODES + electrode, max(a - c0, 0):] += (amp * np.exp(-tt / tau)).astype(np.float32)
        x, zi = sp_signal.sosfilt(sos, x, axis=1, zi=zi)
        keep0 = max(pre - c0, 0)
        if keep0 < n:
            out[c0 + keep0 - pre:c1 - pre] = x[:, keep0:].T.reshape(-1, NUM_BANDS, NUM_ELECTRODES)
    return out
