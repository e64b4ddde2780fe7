"""The config keys of the optional part ``robust`` (the hybrid rule's robust filters,
:mod:`strategies.robust`)."""

from __future__ import annotations

from fl_app.kit.keys import keys, option
from strategies.robust import ROBUST_FILTERS


@keys
class RobustKeys:
    robust_filter: str = option("hybrid: robust filter", choices=ROBUST_FILTERS)
    robust_mad_k: float = option("mad filter: k of median + k·MAD", above=0)
    robust_clip_norm: float = option("clip filter: max update norm (0: the median)", at_least=0)
    robust_norm_ratio: float = option("direction filter: max norm / the median norm", above=1)
    robust_min_cosine: float = option(
        "direction filter: least cosine to the clipped mean kept", at_least=-1, below=1
    )
