"""Exact integer token budgets: how many tokens each modality, window and frame keeps.

Every method turns a fractional plan (a retention, per-window ratios, ...) into integer keep-counts with
the same allocator, so the total kept is exact: `keep_count(N, retention)` audio+video tokens per row,
never "about" that many.

The floor rule: when the budget allows it, every frame keeps at least one token (a frame with nothing
left loses its place in time entirely); when the budget is smaller than the number of frames, the
budget still wins and the frames that keep a token are spread evenly in time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sift.layout import RowLayout, Window

__all__ = [
    "keep_count",
    "allocate",
    "split_modalities",
    "split_row",
    "normalize_ratios",
    "video_frame_budgets",
    "audio_window_budgets",
    "audio_clip_budgets",
    "shift_split",
]


def keep_count(n: int, retention: float) -> int:
    """Tokens kept out of `n` at `retention`: round half up, so budgets never depend on banker's rounding."""
    return min(n, int(math.floor(retention * n + 0.5)))


def allocate(total: int, weights: Sequence[float], caps: Sequence[int], floor: int = 1) -> list[int]:
    """Split `total` into integers proportional to `weights`, each within [floor, cap], summing exactly.

    `total` is clipped to `sum(caps)`. Units with cap 0 get 0. If `total` cannot give every unit its floor,
    the floor goes to `total` units spread evenly over the sequence and nothing else is given.
    Proportional shares are rounded by the largest-remainder method, capacity overflow is redistributed.
    """
    n = len(caps)
    if len(weights) != n:
        raise ValueError(f"allocate: {len(weights)} weights for {n} units")
    caps = [max(0, int(c)) for c in caps]
    total = max(0, min(int(total), sum(caps)))
    floors = [min(floor, c) for c in caps]
    if total < sum(floors):
        eligible = [i for i in range(n) if floors[i] > 0]
        out = [0] * n
        for j in range(total):  # evenly spread: unit j * len / total
            out[eligible[(j * len(eligible)) // total]] += 1
        return out
    out = list(floors)
    remaining = total - sum(out)
    active = [i for i in range(n) if out[i] < caps[i]]
    while remaining > 0 and active:
        w = [max(0.0, float(weights[i])) for i in active]
        wsum = sum(w)
        if wsum <= 0:  # no preference left: spread by remaining capacity
            w = [float(caps[i] - out[i]) for i in active]
            wsum = sum(w)
        shares = [remaining * x / wsum for x in w]
        room = [caps[i] - out[i] for i in active]
        give = [min(int(math.floor(s)), r) for s, r in zip(shares, room)]
        left = remaining - sum(give)
        # largest remainders first, among units that still have room
        order = sorted(range(len(active)), key=lambda k: (-(shares[k] - math.floor(shares[k])), k))
        for k in order:
            if left == 0:
                break
            if give[k] < room[k] and shares[k] > give[k]:
                give[k] += 1
                left -= 1
        for k, i in enumerate(active):
            out[i] += give[k]
        remaining = total - sum(out)
        if sum(give) == 0:  # only rounding dust left: hand it out by weight order
            for k in order:
                if remaining == 0:
                    break
                i = active[k]
                if out[i] < caps[i]:
                    out[i] += 1
                    remaining -= 1
        active = [i for i in range(n) if out[i] < caps[i]]
    return out


def split_modalities(
    n_audio: int,
    n_video: int,
    retention: float,
    audio_advantage: float = 0.0,
    *,
    video_floor: int = 0,
    audio_floor: int = 0,
) -> tuple[int, int]:
    """Integer (audio kept, video kept) for a row, summing exactly to `keep_count(n_audio + n_video, retention)`.

    Audio keeps `audio_advantage` more of its tokens (as a fraction) than video does, when the budget
    allows: OmniZip's presets (rho_audio, rho_video) = (0.3, 0.6) and (0.4, 0.7) are an advantage of 0.3.
    The floors come first: `video_floor` video tokens (one per frame), then `audio_floor` audio tokens
    (one per window), as far as the budget reaches.
    """
    if not 0.0 <= audio_advantage < 1.0:
        raise ValueError(f"audio_advantage must be in [0, 1), got {audio_advantage}")
    total = keep_count(n_audio + n_video, retention)
    if n_audio == 0 or n_video == 0:
        return (total, 0) if n_video == 0 else (0, total)
    # video keep fraction kv with audio at min(1, kv + advantage): solve ka * Na + kv * Nv = total
    kv = (total - audio_advantage * n_audio) / (n_audio + n_video)
    ka = kv + audio_advantage
    if ka > 1.0:
        ka, kv = 1.0, (total - n_audio) / n_video
    if kv < 0.0:
        ka, kv = total / n_audio, 0.0
    keep_a = min(n_audio, int(math.floor(ka * n_audio + 0.5)))
    keep_v = total - keep_a
    if keep_v > n_video:
        keep_a, keep_v = total - n_video, n_video
    v_floor = min(video_floor, n_video, total)
    if keep_v < v_floor:
        keep_v, keep_a = v_floor, total - v_floor
    a_floor = min(audio_floor, n_audio, total - v_floor)
    if keep_a < a_floor:
        keep_a, keep_v = a_floor, total - a_floor
    return keep_a, keep_v


def split_row(row: RowLayout, retention: float, audio_advantage: float = 0.0) -> tuple[int, int]:
    """`split_modalities` for a layout row, with the floors of one token per frame and per audio window."""
    return split_modalities(
        row.num_audio,
        row.num_video,
        retention,
        audio_advantage,
        video_floor=sum(len(w.frames) for w in row.windows),
        audio_floor=sum(1 for w in row.windows if w.num_audio),
    )


def normalize_ratios(ratios: Sequence[float], sizes: Sequence[int], target: float) -> list[float]:
    """Scale per-window drop ratios so that sum(ratio_i * size_i) == target, each ratio kept in [0, 1].

    A bisection on the scale factor of `clip(s * ratio_i, 0, 1)`: every window moves, none is frozen, and
    any number of windows works (the OmniZip reference froze its min and max windows, and missed the
    budget for some window counts).
    """
    total = sum(sizes)
    if total == 0:
        return [0.0] * len(ratios)
    target = min(max(target, 0.0), float(total))
    base = [max(0.0, float(r)) for r in ratios]
    if sum(b * s for b, s in zip(base, sizes)) <= 0:
        base = [1.0] * len(ratios)

    def dropped(scale: float) -> float:
        return sum(min(1.0, scale * b) * s for b, s in zip(base, sizes))

    lo, hi = 0.0, 1.0
    while dropped(hi) < target and hi < 1e12:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if dropped(mid) < target:
            lo = mid
        else:
            hi = mid
    return [min(1.0, hi * b) for b in base]


def video_frame_budgets(windows: list[Window], keep_video: int, window_keep_ratio: list[float] | None = None) -> list[list[int]]:
    """Integer keep-count per frame, summing to `keep_video`, proportional to size x the window's keep ratio."""
    frames = [(wi, f) for wi, w in enumerate(windows) for f in w.frames]
    ratio = window_keep_ratio or [1.0] * len(windows)
    counts = allocate(keep_video, [f.num_tokens * ratio[wi] for wi, f in frames], [f.num_tokens for _, f in frames])
    out: list[list[int]] = [[] for _ in windows]
    for (wi, _), c in zip(frames, counts):
        out[wi].append(c)
    return out


def audio_window_budgets(windows: list[Window], keep_audio: int) -> list[int]:
    """Integer keep-count of audio per window, proportional to the window's audio tokens."""
    sizes = [w.num_audio for w in windows]
    return allocate(keep_audio, sizes, sizes)


def audio_clip_budgets(row: RowLayout, keep_audio: int) -> list[int]:
    """Integer keep-count per audio clip of the row (`row.audio_clips`), proportional to its audio tokens."""
    sizes = [sum(w.num_audio for w in clip.windows) for clip in row.audio_clips]
    return allocate(keep_audio, sizes, sizes)


def shift_split(
    audio: int,
    video: int,
    offset: float,
    *,
    audio_cap: int,
    video_cap: int,
    audio_floor: int = 1,
    video_floor: int = 0,
) -> tuple[int, int]:
    """Move a window's budget between its audio and its video: the audio share's logit plus `offset`.

    `audio + video` is kept exactly; the new audio count is `round(total * sigmoid(logit(audio / total) +
    offset))`, within the caps (the window's tokens) and floors (a token per frame, one audio token). Why
    the logit: an offset means the same relative move whatever the share, and offset 0 returns
    `(audio, video)` unchanged, so a zero-initialised learned split starts as the fixed one. A share of 0
    or 1 is read as a quarter token off it, so an offset can still move it. Floors never exceed what the
    window had: a budget too small for them stays as it was allocated.
    """
    total = audio + video
    if total == 0 or audio_cap == 0 or video_cap == 0:
        return audio, video
    share = min(max(audio / total, 0.25 / total), 1.0 - 0.25 / total)
    moved = 1.0 / (1.0 + math.exp(-(math.log(share / (1.0 - share)) + float(offset))))
    new_audio = min(total, int(math.floor(total * moved + 0.5)))
    audio_floor, video_floor = min(audio_floor, audio), min(video_floor, video)
    new_audio = max(audio_floor, min(new_audio, audio_cap, total - video_floor))
    new_video = total - new_audio
    if new_video > video_cap:
        new_video = video_cap
        new_audio = total - video_cap
    return new_audio, new_video
