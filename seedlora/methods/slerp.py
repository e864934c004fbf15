"""slerp and multislerp: spherical interpolation of the updates, as mergekit defines them.

Both results are combinations Σ c_i τ_i whose coefficients need only the K x K inner products
of the updates, so on factors they are exact at rank Σ r_i (the inputs' factors, B_i scaled
by c_i); the inner products come from Gram matrices of the stacked factors.

slerp (K = 2, https://en.wikipedia.org/wiki/Slerp, mergekit's `slerp`): with
cosθ = ⟨τ_1, τ_2⟩/(‖τ_1‖‖τ_2‖) clamped to [−1, 1], τ = sin((1−t)θ)/sinθ·τ_1 + sin(tθ)/sinθ·τ_2;
t = 0 gives τ_1, t = 1 gives τ_2; |cosθ| > 0.9995 falls back to (1−t)τ_1 + tτ_2 and a norm
≤ 1e-8 counts as 1 (mergekit's constants). Reports cosθ per module.
Deliberate difference: mergekit interpolates the two models' weights W_1, W_2 (one of them the
base), which for 0 < t < 1 is not W + a LoRA update (the coefficients do not sum to 1); we
interpolate the updates, τ = slerp(τ_1, τ_2), W' = W + τ. On models whose adapted weights are
zero the two agree (tests/test_mergekit_parity.py).

multislerp (mergekit's `multislerp`, https://goddard.blog/posts/multislerp-wow-what-a-cool-idea):
weights normalised to sum 1 (normalize_weights), unit updates u_i = τ_i/(‖τ_i‖ + ε), mean
m = Σ w_i u_i, direction μ = m/‖m‖, tangent vectors u_i − ⟨u_i, μ⟩μ averaged with w_i into v,
result (cos‖v‖'·μ + sin‖v‖'/‖v‖'·v)·Σ w_i‖τ_i‖ with ‖v‖' = ‖v‖ + ε. (The weighted tangent mean
v vanishes identically, so this is the normalised weighted mean direction rescaled to the
weighted mean norm.) K = 1 returns the input; ‖m‖ < ε falls back to w_1τ_1 + w_2τ_2 for K = 2
and is an error otherwise, as in mergekit — except when every update is zero (a tensor no input
changed, common in checkpoint merges), which gives a zero update where mergekit raises.
"""

from __future__ import annotations

import math

import torch

from ..errors import MethodError
from ..lowrank import LowRank, concat, grams
from .base import MergeMethod, Param

DOT_THRESHOLD = 0.9995  # mergekit: |cosθ| above this is treated as collinear (linear interpolation)
NORM_EPS = 1e-8  # mergekit: norms at or below this are not normalised


def inner_products(terms: list[LowRank]) -> torch.Tensor:
    """K x K float64 matrix of ⟨τ_i, τ_j⟩ from one pair of Grams of the stacked factors."""
    ranks = [t.rank for t in terms]
    bounds = [sum(ranks[:i]) for i in range(len(terms) + 1)]
    g = grams(concat(terms, [1.0] * len(terms)))
    hadamard = (g.gram_b * g.gram_a).cpu()
    return torch.tensor([[float(hadamard[bounds[i]:bounds[i + 1], bounds[j]:bounds[j + 1]].sum())
                          for j in range(len(terms))] for i in range(len(terms))], dtype=torch.float64)


def dense_inner_products(deltas: list[torch.Tensor]) -> torch.Tensor:
    flat = torch.stack([d.double().reshape(-1) for d in deltas])
    return flat @ flat.T


def slerp_coefficients(gram: torch.Tensor, t: float) -> tuple[list[float], dict]:
    """(c_1, c_2) with slerp = c_1 τ_1 + c_2 τ_2, from the 2 x 2 inner products."""
    norms = [math.sqrt(max(float(gram[i, i]), 0.0)) for i in range(2)]
    norms = [n if n > NORM_EPS else 1.0 for n in norms]
    cos = max(-1.0, min(1.0, float(gram[0, 1]) / (norms[0] * norms[1])))
    if abs(cos) > DOT_THRESHOLD:
        return [1.0 - t, t], {"cos": cos}
    theta = math.acos(cos)
    return [math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)], {"cos": cos}


def multislerp_coefficients(gram: torch.Tensor, weights: torch.Tensor, params: dict) -> list[float]:
    """c with multislerp = Σ c_i τ_i, following mergekit's steps on coefficient vectors."""
    k, eps = gram.shape[0], params["eps"]
    if k == 1:
        return [1.0]
    w = weights.double()
    if params["normalize_weights"]:
        w = w / w.sum()
    norms = gram.diagonal().clamp(min=0.0).sqrt()
    if float(norms.max()) == 0.0:  # no input changed this tensor: no update (mergekit raises here)
        return [0.0] * k
    unit = torch.diag(1.0 / (norms + eps))  # column i: u_i in terms of the τ's
    mean = unit @ w
    mean_norm = math.sqrt(max(float(mean @ gram @ mean), 0.0))
    if mean_norm < eps:
        if k == 2:
            return w.tolist()
        raise MethodError("method 'multislerp': the weighted mean of the unit updates is zero (antipodal "
                          "updates with balancing weights); change --weights")
    mu = mean / mean_norm
    dots = unit.T @ gram @ mu  # ⟨u_i, μ⟩
    tangent = (unit - torch.outer(mu, dots)) @ w  # Σ w_i (u_i − ⟨u_i, μ⟩ μ)
    length = math.sqrt(max(float(tangent @ gram @ tangent), 0.0)) + eps
    direction = math.cos(length) * mu + (math.sin(length) / length) * tangent
    return (direction * float(norms @ w)).tolist()


def slerp_factors(terms: list[LowRank], weights: torch.Tensor, params: dict):
    coeffs, stats = slerp_coefficients(inner_products(terms), params["t"])
    return concat(terms, coeffs), stats


def slerp_deltas(deltas, weights, params, generator):
    coeffs, stats = slerp_coefficients(dense_inner_products(deltas), params["t"])
    return _combination(deltas, coeffs), stats


def multislerp_factors(terms: list[LowRank], weights: torch.Tensor, params: dict) -> LowRank:
    return concat(terms, multislerp_coefficients(inner_products(terms), weights, params))


def multislerp_deltas(deltas, weights, params, generator) -> torch.Tensor:
    return _combination(deltas, multislerp_coefficients(dense_inner_products(deltas), weights, params))


def _combination(deltas: list[torch.Tensor], coeffs: list[float]) -> torch.Tensor:
    out = torch.zeros_like(deltas[0], dtype=torch.float32)
    for delta, c in zip(deltas, coeffs):
        out.add_(delta.float(), alpha=c)
    return out


def _unit_interval(value: float):
    return None if 0.0 <= value <= 1.0 else "must be in [0, 1]"


def _positive(value: float):
    return None if value > 0 else "must be > 0"


SLERP = MergeMethod(
    name="slerp",
    summary="sin((1−t)θ)/sinθ·τ_1 + sin(tθ)/sinθ·τ_2, θ the angle of the updates; t = 0: τ_1, t = 1: τ_2 (cosθ reported)",
    paper="https://en.wikipedia.org/wiki/Slerp",
    merge_deltas=slerp_deltas,
    merge_factors=slerp_factors,
    params=(Param("t", float, 0.5, "interpolation position: 0 = first input, 1 = second", check=_unit_interval),),
    uses_weights=False,
    min_inputs=2,
    max_inputs=2,
    default_weight=lambda k: 1.0,
    mergekit="on updates: yes, to float32 rounding; mergekit slerps whole weights (W_1, W_2), "
             "which differs for 0 < t < 1",
)

MULTISLERP = MergeMethod(
    name="multislerp",
    summary="direction of Σ w_i τ_i/‖τ_i‖, scaled to Σ w_i ‖τ_i‖ (weights normalised)",
    paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    merge_deltas=multislerp_deltas,
    merge_factors=multislerp_factors,
    params=(
        Param("normalize_weights", int, 1, "rescale the weights to sum to 1", choices=(0, 1)),
        Param("eps", float, 1e-8, "added to norms, as mergekit", check=_positive),
    ),
    default_weight=lambda k: 1.0 / k,
    mergekit="yes, to float32 rounding (on models whose adapted weights are 0; mergekit's base_model mode "
             "fails on tensors no input changed)",
)
