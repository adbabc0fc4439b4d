"""Step-level parsing metrics: do the decoder queries find a video's real steps? (docs/method.md §7)

TPT's K queries are meant to parse a video into temporally ordered parts (paper §3.2). Where the
true steps are known (the synthetic benchmark's planted phases, FineDiving's annotated
sub-actions), these functions measure it from the last decoder layer's cross-attention ``(T, K)``
of every evaluated video. Labels come per frame, ``F = T × frames_per_clip`` of them, clip ``t``
covering frames ``[t·fpc, (t+1)·fpc)``; per-clip labels are the case ``frames_per_clip = 1``.
Positions and distances are in frames.

Per video:

- **step**: a maximal run of equal labels, so a recurring sub-action is two steps (A B C B D is
  five); a **true transition** is the first frame of every step but the first.
- **attention centre** of query k: ``Σ_t a[t,k]·c_t / Σ_t a[t,k]``, ``c_t`` the centre frame of
  clip t; a **step centre** is the mean of its frame positions.
- **assignment**: each clip goes to the query that attends to it most (argmax over k, ties to the
  lower query), each frame to its clip's query.
- **matching**: the queries, sorted by attention centre, are matched *in order* to steps: the
  non-decreasing map (centre rank → step) that maximises the frames whose query is matched to their
  true step; among equal maps, the one putting more of the queries' attention on their steps. Each
  frame's **predicted step** is its query's; the **implied transitions** are the first frames of
  the predicted steps' runs but the first (queries sharing a step do not cut it; they fall on clip
  edges).

Over a split (``parsing_metrics``):

- ``parse_order``: fraction of videos whose queries, in centre order, overlap most (attention mass)
  non-decreasing steps covering ``min(K, S)`` distinct steps (strictly increasing when K ≤ S, every
  step some query's when K > S). All queries collapsed onto one step fails.
- ``parse_boundary``: frames of boundary error per true transition. True and implied transitions
  are paired one-to-one in order, ``min(#true, #implied)`` pairs of least total distance; a paired
  true transition costs its distance, a *missed* one (no partner) its distance to the nearer end of
  the video (what a parse without that cut shows), and every *spurious* implied transition adds its
  distance to the nearest true one, so a flickering parse cannot score well by cutting everywhere.
  ``parse_missed``: the fraction of true transitions missed; ``parse_extra``: spurious implied
  transitions per video.
- ``parse_acc``: frame accuracy of the predicted steps.
- ``parse_aiou50``, ``parse_aiou75``: AIoU@d of FineDiving (Xu et al., CVPR 2022, §5.1 evaluation
  metrics): AIoU@d = (1/N) Σ_i 1(IoU_i ≥ d) over the N videos. Here a video counts when *every* true
  step reaches IoU ≥ d with its predicted segment (its frames predicted at that step); the
  authors' released code (``utils/misc.py``) scores one interval per video, from the first to the
  last predicted transition of its two-transition TSA parse, which this generalises to any number
  of steps and queries.
- ``parse_adapt`` (adaptivity): the share of the across-video variance of the true step centres
  that the parse's per-video step positions explain, over all steps at once. Each query gets one
  *split-level step* for the whole split: the queries, in order of their mean attention centre,
  are matched in order (non-decreasing) to step indices so that the attention mass on their steps,
  summed over the videos, is largest. The parse's position of step s in video v, ``p[v,s]``, is
  the mean attention centre of the queries whose step is s (a step no query takes stays at 0).
  With ``c[v,s]`` the true step centre::

      parse_adapt = max(0, 1 − Σ_{v,s} (c[v,s] − p[v,s] − o_s)² / Σ_{v,s} (c[v,s] − mean_v c[v,s])²)

  ``o_s = mean_v (c[v,s] − p[v,s])``: a per-step offset (a constant bias is not adaptation) but no
  free slope, so a position that moves a tenth as much as its step explains little. Queries at
  fixed clips (chunking time) and constant input read exactly 0 (a step whose position never
  moves keeps all its variance as residual), a parser that follows every step reads 1, one query
  that tracks its step among fixed ones reads about its step's share of the variance, and all
  queries collapsed on one step read that step's share (about 1/S). Moving against the truth
  only adds residual, clipped at 0. Videos without step s are left out of its sums; when the
  true centres never move the number is undefined (NaN, warned).
- ``parse_adapt_boundary``: the same for the transitions: ``c`` the true transition into step j,
  ``p`` the parse's cut into it, read with the split-level steps (the clip edge that best
  separates clips whose query's split-level step is < j from those ≥ j). A transition the parse
  never cuts (no query's step is ≥ j) has a constant cut and counts as unexplained, not left
  out. The split-level steps are fixed for the split, so a parse fitted to nothing cannot look
  adaptive.

K ≠ S: with K < S at most K steps get a query, so accuracy and AIoU stay below 1 and transitions
are missed; with K > S several queries may share a step (order then asks that every step be
covered). Videos whose labels are all unknown (−1) are left out; videos with non-finite attention
are left out with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from tpt_aqa.data.labels import step_runs
from tpt_aqa.scoring.metrics import UndefinedMetricWarning, undefined

AIOU_THRESHOLDS = {"parse_aiou50": 0.5, "parse_aiou75": 0.75}


# every metric and its better direction (W&B summaries, tables)
METRICS = {
    "parse_order": "max",
    "parse_boundary": "min",
    "parse_missed": "min",
    "parse_extra": "min",
    "parse_acc": "max",
    "parse_aiou50": "max",
    "parse_aiou75": "max",
    "parse_adapt": "max",
    "parse_adapt_boundary": "max",
}


def clip_centres(num_clips: int, frames_per_clip: int) -> np.ndarray:
    """Centre frame of every clip ``(T,)``: ``t·fpc + (fpc − 1)/2``."""
    return np.arange(num_clips) * frames_per_clip + (frames_per_clip - 1) / 2


def attention_centres(attn: np.ndarray, frames_per_clip: int = 1) -> np.ndarray:
    """Attention-weighted mean frame position of every query.

    Args:
        attn: attention ``(..., T, K)``.
        frames_per_clip: frames covered by each clip.

    Returns:
        Centres ``(..., K)`` in frames.
    """
    attn = np.asarray(attn, dtype=np.float64)
    c = clip_centres(attn.shape[-2], frames_per_clip)
    return np.einsum("...tk,t->...k", attn, c) / attn.sum(-2)


def implied_transitions(clip_steps: np.ndarray, frames_per_clip: int = 1) -> np.ndarray:
    """First frames of the runs of a clip → predicted step map, but the first ``(#runs − 1,)``."""
    starts, _, _ = step_runs(clip_steps)
    return starts[1:] * frames_per_clip


def _ordered_map(gain: np.ndarray) -> np.ndarray:
    """The non-decreasing map rows → columns maximising ``Σ_r gain[r, m(r)]``.

    Args:
        gain: ``(R, C)``.

    Returns:
        ``m (R,)``, non-decreasing column indices.
    """
    rows, cols = gain.shape
    best = np.empty((rows, cols))
    arg = np.zeros((rows, cols), dtype=np.int64)  # best previous column for (r, c)
    best[0] = gain[0]
    for r in range(1, rows):
        run_best = np.maximum.accumulate(best[r - 1])  # best over columns ≤ c
        run_arg = np.zeros(cols, dtype=np.int64)
        for c in range(1, cols):
            run_arg[c] = run_arg[c - 1] if best[r - 1, run_arg[c - 1]] >= best[r - 1, c] else c
        best[r] = gain[r] + run_best
        arg[r] = run_arg
    m = np.empty(rows, dtype=np.int64)
    m[-1] = int(np.argmax(best[-1]))
    for r in range(rows - 1, 0, -1):
        m[r - 1] = arg[r, m[r]]
    return m


def _increasing_injection(cost: np.ndarray) -> np.ndarray:
    """Strictly increasing columns ``j_0 < j_1 < …`` for rows (R ≤ C) minimising ``Σ cost[i, j_i]``."""
    rows, cols = cost.shape
    best = np.full((rows + 1, cols + 1), np.inf)
    best[0] = 0.0
    for i in range(1, rows + 1):
        for j in range(i, cols + 1):
            best[i, j] = min(best[i, j - 1], best[i - 1, j - 1] + cost[i - 1, j - 1])
    picked = np.empty(rows, dtype=np.int64)
    i, j = rows, cols
    while i > 0:
        if j > i and best[i, j] == best[i, j - 1]:
            j -= 1
        else:
            picked[i - 1] = j - 1
            i, j = i - 1, j - 1
    return picked


def pair_transitions(
    true: np.ndarray, implied: np.ndarray, num_frames: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair true and implied transitions one-to-one in order (module docstring).

    Args:
        true: true transitions ``(n,)``, ascending, in frames.
        implied: implied transitions ``(m,)``, ascending, in frames.
        num_frames: F, for the cost of a missed transition (distance to the nearer end).

    Returns:
        ``partner (n,)``: the implied position paired with each true transition, NaN when missed;
        ``cost (n,)``: its distance, or the missed cost; ``extra (m − pairs,)``: the cost of every
        spurious implied transition, its distance to the nearest true one (to the nearer end of
        the video when there is none).
    """
    true = np.asarray(true, dtype=np.float64)
    implied = np.asarray(implied, dtype=np.float64)
    miss = np.minimum(true, num_frames - true)  # (n,)
    partner = np.full(len(true), np.nan)
    dist = np.abs(true[:, None] - implied[None, :])  # (n, m)
    if len(true) and len(implied):
        if len(true) <= len(implied):
            partner = implied[_increasing_injection(dist)]
        else:  # choose which true transitions are paired: Σ miss + Σ_paired (dist − miss)
            chosen = _increasing_injection((dist - miss[:, None]).T)  # (m,) rows of true
            partner[chosen] = implied
    cost = np.where(np.isnan(partner), miss, np.abs(true - np.nan_to_num(partner)))
    spurious = implied[~np.isin(implied, partner)]
    if len(true):
        extra = np.abs(spurious[:, None] - true[None, :]).min(axis=1)
    else:
        extra = np.minimum(spurious, num_frames - spurious)
    return partner, cost, extra


@dataclass
class VideoParse:
    """How one video's attention parses its steps.

    Attributes:
        in_order: the order criterion holds.
        accuracy: frame accuracy under the matching.
        min_iou: the smallest IoU of a true step with its predicted segment.
        centres: attention centre of every query ``(K,)``, frames.
        matched: the step each query is matched to ``(K,)``.
        step_centres: centre of every true step ``(S,)``, frames.
        transitions: true transitions ``(n,)``.
        implied: implied transitions ``(m,)``.
        partners: the implied transition paired with each true one, NaN when missed ``(n,)``.
        transition_costs: distance (or missed cost) of each true transition ``(n,)``.
        extra_costs: cost of each spurious implied transition ``(m − pairs,)``.
        assignment: the query attending each clip most ``(T,)``.
        frames_per_clip: frames covered by each clip.
        mass: attention mass of every query on every step ``(K, S)`` (each row sums to 1).
    """

    in_order: bool
    accuracy: float
    min_iou: float
    centres: np.ndarray
    matched: np.ndarray
    step_centres: np.ndarray
    transitions: np.ndarray
    implied: np.ndarray
    partners: np.ndarray
    transition_costs: np.ndarray
    extra_costs: np.ndarray
    assignment: np.ndarray
    frames_per_clip: int
    mass: np.ndarray

    @property
    def matched_centres(self) -> np.ndarray:
        """Centre of the step each query is matched to ``(K,)``, frames."""
        return self.step_centres[self.matched]


def parse_video(attn: np.ndarray, labels: np.ndarray, frames_per_clip: int = 1) -> VideoParse:
    """Parse one video (module docstring for every definition).

    Args:
        attn: last-layer attention ``(T, K)``, each query's column over the clips.
        labels: true label of every frame ``(F,)``, ``F = T·frames_per_clip``.
        frames_per_clip: frames covered by each clip.

    Returns:
        The video's parse.
    """
    attn = np.asarray(attn, dtype=np.float64)
    labels = np.asarray(labels).ravel()
    num_clips, num_queries = attn.shape
    num_frames = num_clips * frames_per_clip
    if labels.shape != (num_frames,):
        raise ValueError(
            f"labels must have F = T·frames_per_clip = {num_clips}·{frames_per_clip} = "
            f"{num_frames} entries, got {labels.shape}"
        )
    starts, ends, _ = step_runs(labels)
    num_steps = len(starts)
    step_of_frame = np.repeat(np.arange(num_steps), ends - starts)  # (F,)
    frame_clip = np.arange(num_frames) // frames_per_clip  # (F,)
    assignment = attn.argmax(axis=1)  # (T,) the query attending each clip most
    frame_query = assignment[frame_clip]  # (F,)

    centres = attention_centres(attn, frames_per_clip)  # (K,)
    rank = np.argsort(centres, kind="stable")  # queries in centre order
    # attention mass of each query on each step (a clip's mass split over its frames' steps)
    share = np.zeros((num_clips, num_steps))  # (T, S): fraction of clip t's frames in step s
    np.add.at(share, (frame_clip, step_of_frame), 1.0 / frames_per_clip)
    mass = attn.T @ share  # (K, S)
    overlap = np.zeros((num_queries, num_steps))  # (K, S): frames of step s assigned to query k
    np.add.at(overlap, (frame_query, step_of_frame), 1.0)

    most = mass[rank].argmax(axis=1)  # (K,) most-overlapped step, queries in centre order
    in_order = bool(
        np.all(np.diff(most) >= 0) and len(set(most.tolist())) == min(num_queries, num_steps)
    )

    # attention mass (≤ 1 per query) breaks ties between maps of equal frame counts and never
    # outweighs a frame: K queries × weight 1/(2K) < 1
    gain = overlap[rank] + mass[rank] / (2 * num_queries)  # (K, S)
    matched = np.empty(num_queries, dtype=np.int64)
    matched[rank] = _ordered_map(gain)  # (K,) step of every query
    hits = overlap[np.arange(num_queries), matched].sum()
    predicted = np.zeros(num_steps)  # frames assigned to queries matched to each step
    inter = np.zeros(num_steps)
    np.add.at(predicted, matched, overlap.sum(1))
    np.add.at(inter, matched, overlap[np.arange(num_queries), matched])
    union = predicted + (ends - starts) - inter
    step_centres = (starts + ends - 1) / 2

    transitions = starts[1:]
    implied = implied_transitions(matched[assignment], frames_per_clip)
    partners, costs, extra = pair_transitions(transitions, implied, num_frames)
    return VideoParse(
        in_order=in_order,
        accuracy=float(hits / num_frames),
        min_iou=float((inter / union).min()),
        centres=centres,
        matched=matched,
        step_centres=step_centres,
        transitions=transitions,
        implied=implied,
        partners=partners,
        transition_costs=costs,
        extra_costs=extra,
        assignment=assignment,
        frames_per_clip=frames_per_clip,
        mass=mass,
    )


def parsing_metrics(
    attn: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    frames_per_clip: int | None = None,
) -> dict[str, float]:
    """The step-level parsing metrics of a split (module docstring).

    Args:
        attn: last-layer attention ``(N, T, K)``.
        labels: true label of every frame ``(N, F)``, −1 where unknown; ``F = T·frames_per_clip``.
        frames_per_clip: frames per clip; ``None`` takes ``F / T``.

    Returns:
        The values named in ``METRICS``; empty when no video has labels.

    Raises:
        ValueError: on shapes that do not fit, or a video with some frames labelled and some not.
    """
    a = np.asarray(torch.as_tensor(attn).detach().cpu().double())
    lab = np.asarray(torch.as_tensor(labels).detach().cpu().long())
    if a.ndim != 3 or lab.ndim != 2 or a.shape[0] != lab.shape[0]:
        raise ValueError(
            f"parsing_metrics takes attention (N, T, K) and labels (N, F), got {a.shape} and "
            f"{lab.shape}"
        )
    num_clips = a.shape[1]
    if frames_per_clip is None:
        if lab.shape[1] % num_clips:
            raise ValueError(
                f"labels have {lab.shape[1]} frames per video, not a multiple of the {num_clips} clips"
            )
        frames_per_clip = lab.shape[1] // num_clips
    known = lab >= 0
    partial = np.flatnonzero(known.any(1) & ~known.all(1))
    if len(partial):
        raise ValueError(
            f"videos {partial[:5].tolist()} have some frames labelled and some unknown (−1): "
            "label every frame of a video or none"
        )
    finite = np.isfinite(a).all(axis=(1, 2))
    keep = known.all(1) & finite
    if not known.all(1).any():
        return {}
    if (known.all(1) & ~finite).any():
        warnings.warn(
            f"{int((known.all(1) & ~finite).sum())} videos with non-finite attention are left out "
            "of the parsing metrics",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    parses = [parse_video(a[i], lab[i], frames_per_clip) for i in np.flatnonzero(keep)]
    if not parses:
        nan = undefined("the parsing metrics have no video with finite attention to parse")
        return dict.fromkeys(METRICS, nan)
    num_true = sum(len(p.transitions) for p in parses)
    cost = sum(p.transition_costs.sum() + p.extra_costs.sum() for p in parses)
    missed = sum(int(np.isnan(p.partners).sum()) for p in parses)
    min_iou = np.array([p.min_iou for p in parses])
    no_transition = "the videos have one step each, so no true transition"
    out = {
        "parse_order": float(np.mean([p.in_order for p in parses])),
        "parse_boundary": float(cost / num_true) if num_true else undefined(no_transition),
        "parse_missed": missed / num_true if num_true else undefined(no_transition),
        "parse_extra": float(np.mean([len(p.extra_costs) for p in parses])),
        "parse_acc": float(np.mean([p.accuracy for p in parses])),
    }
    for name, threshold in AIOU_THRESHOLDS.items():
        out[name] = float(np.mean(min_iou >= threshold))
    if len(parses) < 2:
        out["parse_adapt"] = out["parse_adapt_boundary"] = undefined(
            f"adaptivity (a variance across videos) needs at least two videos, got {len(parses)}"
        )
        return out
    steps = split_matching(parses)
    out["parse_adapt"] = _query_adaptivity(parses, steps)
    out["parse_adapt_boundary"] = _transition_adaptivity(parses, steps)
    return out


def split_matching(parses: list[VideoParse]) -> np.ndarray:
    """Each query's *split-level step* ``(K,)``, one for the whole split: the queries, sorted by
    their mean attention centre over the videos, are matched in order (non-decreasing) to step
    indices so that the attention mass they put on their steps, summed over the videos, is
    largest. A step index a video lacks gains nothing there."""
    num_steps = max(p.mass.shape[1] for p in parses)
    gain = np.zeros((parses[0].mass.shape[0], num_steps))  # (K, S): Σ_v mass[v, k, s]
    for p in parses:
        gain[:, : p.mass.shape[1]] += p.mass
    rank = np.argsort(np.mean([p.centres for p in parses], axis=0), kind="stable")
    steps = np.empty(len(rank), dtype=np.int64)
    steps[rank] = _ordered_map(gain[rank])
    return steps


def explained_variance(true: np.ndarray, parsed: np.ndarray, what: str) -> float:
    """The share of the across-video variance of ``true`` that ``parsed`` explains, over all its
    columns at once, with a free offset per column and no free slope:
    ``max(0, 1 − Σ_{v,j} (true − parsed − o_j)² / Σ_{v,j} (true − mean_v true)²)``, ``o_j`` the mean
    over videos of ``true − parsed`` in column j (the least-squares offset).

    Args:
        true: true positions ``(N, J)``, NaN where a video lacks column j.
        parsed: the parse's positions ``(N, J)``; a column that is constant over the videos where
            it is defined explains none of its variance (exactly 0, not a rounding residue).
        what: the positions' name, for the undefined case.

    Returns:
        The share in [0, 1]; NaN with an :class:`UndefinedMetricWarning` when ``true`` never
        moves (no variance to explain).
    """
    total = residual = 0.0
    for j in range(true.shape[1]):
        has = np.isfinite(true[:, j])
        if has.sum() < 2:
            continue
        t, p = true[has, j], parsed[has, j]
        spread = float(((t - t.mean()) ** 2).sum())
        total += spread
        if np.ptp(p) == 0:  # a constant parse: its offset takes the mean, the spread remains
            residual += spread
        else:
            d = t - p
            residual += float(((d - d.mean()) ** 2).sum())
    if total <= 0:
        return undefined(
            f"adaptivity is undefined: the {what} sit at the same frames in every video"
        )
    return max(0.0, 1.0 - residual / total)


def _query_adaptivity(parses: list[VideoParse], steps: np.ndarray) -> float:
    """Explained variance of the true step centres by the parse's step positions: per video the
    mean attention centre of the queries whose split-level step it is (a step no query takes has a
    constant position, so it explains nothing)."""
    num_steps = max(len(p.step_centres) for p in parses)
    true = np.full((len(parses), num_steps), np.nan)  # (N, S)
    parsed = np.zeros((len(parses), num_steps))  # (N, S); 0 where no query takes the step
    for v, p in enumerate(parses):
        true[v, : len(p.step_centres)] = p.step_centres
        for s in np.unique(steps):
            parsed[v, s] = p.centres[steps == s].mean()
    return explained_variance(true, parsed, "step centres")


def _transition_adaptivity(parses: list[VideoParse], steps: np.ndarray) -> float:
    """Explained variance of the true transitions by the parse's cuts, over all transitions at once.

    The cut into step j is read with the split-level steps, the same for every video: the clip edge
    that best splits the clips whose query's split-level step is < j from those ≥ j (fewest clips
    on the wrong side, the earliest on ties). A per-video matching, fitted to each video's truth,
    would make any parse with many runs look adaptive. A transition the parse never cuts (no query
    takes a step ≥ j) has a constant cut, so it explains nothing.
    """
    clip_steps = steps[np.stack([p.assignment for p in parses])]  # (N, T) per clip
    num_steps = max(len(p.step_centres) for p in parses)
    frames_per_clip = np.array([p.frames_per_clip for p in parses])  # (N,)
    true = np.full((len(parses), max(num_steps - 1, 0)), np.nan)  # (N, S − 1)
    cuts = np.zeros_like(true)
    zero = np.zeros((len(parses), 1), dtype=np.int64)
    for j in range(1, num_steps):
        late = clip_steps >= j  # (N, T)
        before = np.hstack([zero, np.cumsum(late, axis=1)])  # late clips before each edge
        after = np.hstack([np.cumsum(~late[:, ::-1], axis=1)[:, ::-1], zero])  # early ones after
        cuts[:, j - 1] = np.argmin(before + after, axis=1) * frames_per_clip  # the first best edge
        for v, p in enumerate(parses):
            if j < len(p.step_centres):
                true[v, j - 1] = p.transitions[j - 1]
    if not true.size:
        return undefined("transition adaptivity: every video is a single step")
    return explained_variance(true, cuts, "true transitions")
