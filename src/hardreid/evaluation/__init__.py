"""Re-identification evaluation: Market-1501 CMC/mAP and k-reciprocal re-ranking."""

from __future__ import annotations

from hardreid.evaluation.ranking import RankingResult, evaluate_ranking
from hardreid.evaluation.rerank import camera_aware_re_ranking, re_ranking

__all__ = ["RankingResult", "camera_aware_re_ranking", "evaluate_ranking", "re_ranking"]
