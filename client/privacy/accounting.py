"""Epsilon from an accountant history, with Opacus' own accountants.

A history is a sequence of ``(noise_multiplier, sample_rate, steps)``: ``steps``
Sampled Gaussian Mechanism steps, each Poisson-sampling *patients* at ``sample_rate``
and adding Gaussian noise ``noise_multiplier * C`` to the sum of clipped per-patient
gradients. It is exactly what Opacus' accountants keep in ``accountant.history``.

:func:`epsilon` computes the bound with :class:`opacus.accountants.RDPAccountant`
(always) and :class:`opacus.accountants.PRVAccountant` (when affordable), and reports
the tighter one, naming it. Nothing is cached: every call recomputes from the history
it is given.

Decisions:

- Composition is commutative, so entries with the same ``(noise_multiplier,
  sample_rate)`` are merged (steps summed, order of first appearance) before the
  accountants see them. This is exact and makes a ledger of a hundred rounds of the
  same run cost what one entry costs.
- PRV discretises the privacy loss on a grid whose size grows with the total number of
  steps and whose work grows with the number of distinct entries; for very small noise
  or huge step counts it can need tens of GB or minutes. The grid is sized first, with
  Opacus' own formulas, and PRV is skipped (the RDP bound is reported, and
  ``note`` says why) when it exceeds :data:`PRV_MAX_GRID`, :data:`PRV_MAX_WORK` or
  :data:`PRV_MAX_PAIRS`. The limits are fixed numbers, not timers, so the same history
  always gives the same accountant and the same epsilon on every machine. Any PRV
  failure (exception, non-finite value) also falls back to RDP, with the reason in
  ``note``.
- PRV's value is Opacus' ``eps_upper`` (estimate plus its numerical error bound,
  ``eps_error`` = 0.01, ``delta_error`` = delta / 1000), so it is an upper bound like
  RDP's. The smaller of the two is reported.
- A history with a step of ``noise_multiplier == 0`` (non-private training) has no
  finite epsilon: ``epsilon`` is ``inf``.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

History = Sequence[tuple[float, float, int]]

PRV_EPS_ERROR = 0.01  # Opacus' default for PRVAccountant.get_epsilon
PRV_MAX_PAIRS = 32  # distinct (noise_multiplier, sample_rate) pairs
PRV_MAX_GRID = 4_000_000  # points of the discretisation grid (32 MB per array, < 1 GB peak)
PRV_MAX_WORK = 8_000_000  # pairs x grid points (<= ~8 s on one core)
MAX_NOISE_MULTIPLIER = 100.0  # noise_for_target_epsilon searches up to this


class AccountingError(ValueError):
    """A requested privacy setting cannot be met; the message names it and the fix."""


@dataclass(frozen=True)
class PrivacySpent:
    """An (epsilon, delta) bound for a history and the accountant that gave it.

    ``rdp_epsilon`` is always computed; ``prv_epsilon`` is None when PRV was skipped or
    failed (``note`` says why). ``epsilon`` is the smaller, ``accountant`` names it.
    """

    epsilon: float
    delta: float
    accountant: str
    steps: int
    entries: int
    rdp_epsilon: float = 0.0
    prv_epsilon: float | None = None
    note: str = ""

    @property
    def finite(self) -> bool:
        return math.isfinite(self.epsilon)

    def to_dict(self) -> dict:
        """JSON-safe: an unbounded epsilon is ``None`` with ``"unbounded": true``."""
        d = asdict(self)
        for key in ("epsilon", "rdp_epsilon", "prv_epsilon"):
            if d[key] is not None and not math.isfinite(d[key]):
                d[key] = None
        d["unbounded"] = not self.finite
        return d


def check_history(history: Iterable) -> list[tuple[float, float, int]]:
    """Validate a history; return it as a list of ``(float, float, int)``."""
    out = []
    for i, item in enumerate(history):
        try:
            sigma, q, steps = item
        except (TypeError, ValueError):
            raise ValueError(f"history entry {i} is not (noise_multiplier, sample_rate, steps)") from None
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"history entry {i}: noise_multiplier must be a finite number >= 0")
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ValueError(f"history entry {i}: sample_rate must be in (0, 1]")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"history entry {i}: steps must be an integer >= 0")
        out.append((float(sigma), float(q), int(steps)))
    return out


def merge_history(history: History) -> list[tuple[float, float, int]]:
    """Entries with equal (noise_multiplier, sample_rate) merged, steps summed.

    Exact (composition is commutative); order of first appearance; zero-step entries
    dropped.
    """
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:
        if steps:
            merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def epsilon(history: Iterable, delta: float) -> PrivacySpent:
    """The tighter of the RDP and PRV bounds on epsilon at ``delta`` for ``history``."""
    _check_delta(delta)
    raw = check_history(history)
    steps = sum(s for _, _, s in raw)
    merged = merge_history(raw)
    base = dict(delta=float(delta), steps=steps, entries=len(raw))
    if not merged:
        return PrivacySpent(epsilon=0.0, accountant="rdp", rdp_epsilon=0.0, prv_epsilon=0.0,
                            note="no training steps recorded", **base)
    if any(sigma == 0 for sigma, _, _ in merged):
        return PrivacySpent(epsilon=math.inf, accountant="rdp", rdp_epsilon=math.inf,
                            note="the history contains non-private training (noise_multiplier 0): "
                                 "no finite epsilon", **base)
    rdp, prv, note = _bounds(tuple(merged), float(delta))
    if prv is not None and prv < rdp:
        return PrivacySpent(epsilon=prv, accountant="prv", rdp_epsilon=rdp, prv_epsilon=prv, note=note, **base)
    return PrivacySpent(epsilon=rdp, accountant="rdp", rdp_epsilon=rdp, prv_epsilon=prv, note=note, **base)


@functools.lru_cache(maxsize=256)
def _bounds(merged: tuple, delta: float) -> tuple[float, float | None, str]:
    """RDP and PRV bounds of a merged history: a pure function, so memoised (a round's
    budget check and its report after training ask for the same history)."""
    rdp = rdp_epsilon(merged, delta)
    prv, note = _prv_epsilon(merged, delta, rdp)
    return rdp, prv, note


# Integer orders 2..128: any set of orders gives a valid RDP bound; these are ~8x faster
# than Opacus' defaults and at most ~1% looser, so the noise search may over-noise slightly.
SEARCH_ORDERS = tuple(float(order) for order in range(2, 129))


def rdp_epsilon(history: History, delta: float, orders: Sequence[float] | None = None) -> float:
    """Opacus' RDP bound (default orders unless given) for an already validated history."""
    from opacus.accountants import RDPAccountant  # Opacus is imported where epsilon is computed

    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():  # "optimal order is the smallest/largest alpha": not actionable here
        warnings.simplefilter("ignore", UserWarning)
        if orders is None:
            return float(accountant.get_epsilon(delta=delta))
        return float(accountant.get_epsilon(delta=delta, alphas=list(orders)))


def _prv_accountant(history: History):
    """Opacus' PRVAccountant for ``history`` that computes its discretisation domain once.

    Sizing the grid (to decide whether PRV is affordable) and computing epsilon both need
    the safe domain, whose computation is the slow part (~2 s of RDP at fractional orders
    for a few hundred steps); the subclass keeps Opacus' own domain from the first call.
    """
    from opacus.accountants import PRVAccountant

    class _DomainOnce(PRVAccountant):
        _domain = None

        def _get_domain(self, **kwargs):
            if self._domain is None:
                self._domain = super()._get_domain(**kwargs)
            return self._domain

    accountant = _DomainOnce()
    accountant.history = list(history)
    return accountant


def _prv_domain_size(accountant, delta: float) -> int:
    """Size of the grid ``accountant`` would discretise its history on (Opacus' own domain)."""
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

    history = accountant.history
    delta_error = delta / 1000
    total = sum(s for _, _, s in history)
    mesh = PRV_EPS_ERROR / math.sqrt(total * math.log(12 / delta_error) / 2)
    lower = 2 * (PRV_EPS_ERROR + 3) / mesh  # the domain is at least [-(eps_error+3), eps_error+3]
    if lower > PRV_MAX_GRID:
        return int(lower)
    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        domain = accountant._get_domain(prvs=prvs, num_self_compositions=[s for _, _, s in history],
                                        eps_error=PRV_EPS_ERROR, delta_error=delta_error)
    return domain.size  # an infinite safe domain raises here: the caller falls back to RDP


def _prv_epsilon(history: History, delta: float, rdp: float) -> tuple[float | None, str]:
    """PRV's upper bound, or (None, why it was not used)."""
    if not math.isfinite(rdp):
        return None, "prv skipped: the RDP bound is not finite"
    if len(history) > PRV_MAX_PAIRS:
        return None, (f"prv skipped: {len(history)} distinct (noise_multiplier, sample_rate) pairs "
                      f"> {PRV_MAX_PAIRS}; the RDP bound is reported")
    accountant = _prv_accountant(history)
    try:
        grid = _prv_domain_size(accountant, delta)
    except Exception as exc:  # noqa: BLE001 - any failure means: use RDP
        return None, f"prv skipped: sizing its grid failed ({type(exc).__name__}); the RDP bound is reported"
    if grid > PRV_MAX_GRID or grid * len(history) > PRV_MAX_WORK:
        return None, (f"prv skipped: its grid would have {grid} points x {len(history)} pairs "
                      f"(limits {PRV_MAX_GRID} points, {PRV_MAX_WORK} work); the RDP bound is reported")
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(accountant.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
    except Exception as exc:  # noqa: BLE001 - PRV is an optimisation over RDP, never required
        return None, f"prv failed ({type(exc).__name__}: {exc}); the RDP bound is reported"
    if not math.isfinite(value) or value < 0:
        return None, "prv gave no finite bound; the RDP bound is reported"
    return value, ""


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior_history: Iterable = (),
    *,
    accountant: str = "rdp",
    rel_tol: float = 1e-4,
) -> float:
    """Smallest noise multiplier (to ``rel_tol``) keeping prior + new epsilon <= target.

    ``accountant`` names the bound: ``"rdp"`` (default: bisection, fast, and never below
    the reported bound, so the answer also satisfies :func:`epsilon`) or ``"best"`` (the
    bound :func:`epsilon` reports, the tighter of RDP and PRV, which a site spends up to
    its target with: the RDP answer, then false position between it and 10 %-steps below
    it, a few PRV evaluations of ~0.2-0.4 s). The answer ``sigma`` satisfies the target;
    ``sigma * (1 - rel_tol)`` does not, or (``"best"``) sigma's epsilon is within
    ``rel_tol`` of the target. Raises :class:`AccountingError` when no noise multiplier up
    to :data:`MAX_NOISE_MULTIPLIER` meets the target.
    """
    _check_delta(delta)
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) \
            or not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise AccountingError("target_epsilon must be a finite number > 0; fix: pass the site's "
                              "[privacy] max-epsilon or a smaller per-run target")
    if accountant not in ("rdp", "best"):
        raise ValueError(f"accountant must be 'rdp' or 'best', not {accountant!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not 0 < sample_rate <= 1:
        raise ValueError("sample_rate must be in (0, 1] (expected patients per step / patients)")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError("steps must be an integer >= 1")
    prior = merge_history(check_history(prior_history))

    def eps(history: list[tuple[float, float, int]], bound: str = "rdp") -> float:
        history = merge_history(history)
        if not history:
            return 0.0
        if any(sigma == 0 for sigma, _, _ in history):
            return math.inf
        with warnings.catch_warnings():  # trial sigmas far off put the optimum at an extreme order
            warnings.simplefilter("ignore")
            if bound == "best":
                return epsilon(history, delta).epsilon
            return rdp_epsilon(history, delta, SEARCH_ORDERS)

    new = (float(sample_rate), int(steps))
    spent = eps(prior)
    if spent >= target_epsilon:
        raise AccountingError(
            f"target_epsilon {target_epsilon:g} is not above the epsilon already spent by this "
            f"dataset's prior history ({spent:g} at delta {delta:g}); rule: the total over the "
            "dataset's whole history must stay within the target; fix: raise the target "
            "([privacy] max-epsilon) or train on new data")
    hi = MAX_NOISE_MULTIPLIER
    if eps(prior + [(hi, *new)]) > target_epsilon:
        raise AccountingError(
            f"target_epsilon {target_epsilon:g} at delta {delta:g} with sample_rate {sample_rate:g} "
            f"and {steps} steps needs noise_multiplier > {MAX_NOISE_MULTIPLIER:g} (the limit); fix: "
            "fewer steps (local epochs), a lower sample_rate (expected patients per step), "
            "or a larger target_epsilon")
    lo = 0.0  # epsilon is unbounded without noise
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if eps(prior + [(mid, *new)]) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    if accountant == "rdp":
        return hi
    return _smallest_below(lambda sigma: eps(prior + [(sigma, *new)], "best"), hi, target_epsilon, rel_tol)


def _smallest_below(eps_of: Callable[[float], float], hi: float, target: float, rel_tol: float) -> float:
    """The smallest sigma (see noise_for_target_epsilon) with eps_of(sigma) <= target, given
    that `hi` meets it and eps_of decreases: a bracket from 10 % steps down, then false
    position on log epsilon (Illinois: the side that stays has its value halved)."""
    e_hi = eps_of(hi)
    lo, e_lo = hi, e_hi
    while e_lo <= target:
        hi, e_hi = lo, e_lo
        lo *= 0.9
        e_lo = eps_of(lo)
    f_lo, f_hi = math.log(e_lo / target), math.log(e_hi / target)  # > 0, <= 0
    kept = None
    while hi - lo > rel_tol * hi and e_hi < target * (1 - rel_tol):
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        mid = min(max(mid, lo + 0.02 * (hi - lo)), hi - 0.02 * (hi - lo))
        e_mid = eps_of(mid)
        if e_mid <= target:
            hi, e_hi, f_hi = mid, e_mid, math.log(e_mid / target)
            f_lo = f_lo / 2 if kept == "lo" else f_lo
            kept = "lo"
        else:
            lo, e_lo, f_lo = mid, e_mid, math.log(e_mid / target)
            f_hi = f_hi / 2 if kept == "hi" else f_hi
            kept = "hi"
    return hi


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1); fix: use the policy's resolved delta "
                         "(1 / (10 * patients) by default)")
