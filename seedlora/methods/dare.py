"""dare_linear / dare_ties with a choice of rescale: sparsify.py's DARE plus mergekit's L1 rule.

DARE (Yu et al. 2023, https://arxiv.org/abs/2311.03099) keeps each entry with probability ρ
and divides what it keeps by ρ (`rescale inverse`, the default: unbiased, E[τ̃] = τ; computed
by sparsify.merge_sparsified). mergekit keeps the same Bernoulli(ρ) entries but rescales by
L1-norm matching, ‖τ‖₁/‖τ ⊙ m‖₁ per tensor (`rescale l1`); `none` keeps the survivors as they
are. The masks are the same draws from the module's seeded generator in every mode.

Deliberate differences from mergekit, besides the random draws (mergekit uses torch's global
RNG, so masks differ and results agree in distribution; exactly at density 1): mergekit's
dare_ties does not divide the agreeing sum by default (`normalize: false`); we divide by the
number of agreeing inputs as TIES does (mergekit with `normalize: true` and unit weights).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from .masking import combine, masked, rescale_param
from .sparsify import DARE_LINEAR as _DARE_LINEAR
from .sparsify import DARE_TIES as _DARE_TIES
from .sparsify import merge_sparsified, random_keep_mask


def merge_deltas(deltas, weights, params, generator, *, combine_mode: str):
    """DARE with params['rescale']: 'inverse' is sparsify's own path; 'l1'/'none' reuse its masks."""
    if params["rescale"] == "inverse":
        return merge_sparsified(deltas, weights, params, generator, drop="random", combine=combine_mode)
    density = params["density"]
    masks = [random_keep_mask(d.shape, density, generator).to(d.device) for d in deltas]
    sparse = [masked(d, m, params["rescale"]) for d, m in zip(deltas, masks)]
    return combine(sparse, weights, params, consensus=combine_mode == "sign_elect")


DARE_LINEAR = replace(
    _DARE_LINEAR,
    params=_DARE_LINEAR.params + (rescale_param("inverse"),),
    merge_deltas=partial(merge_deltas, combine_mode="sum"),
    mergekit="same keep rates (other random draws); exact at density 1 and, with --rescale l1, given mergekit's masks",
)
DARE_TIES = replace(
    _DARE_TIES,
    params=_DARE_TIES.params + (rescale_param("inverse"),),
    merge_deltas=partial(merge_deltas, combine_mode="sign_elect"),
    mergekit="same keep rates (other random draws); exact at density 1 (mergekit with normalize: true, unit weights)",
)
