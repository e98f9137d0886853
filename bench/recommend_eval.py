"""The MovieLens ranking evaluation from a script (the same as ``domainllm eval recommend-ranking``).

    .venv/bin/python bench/recommend_eval.py --users 100 --llm-candidates 30

Protocols, systems and output are described in ``finetune/evals/recommend.py``; the report lands
in bench/results/quality_recommend_ranking.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from core.config import get_settings
from finetune.evals.recommend import RESULTS_DIR, evaluate, print_report


def main() -> None:
    parser = argparse.ArgumentParser(description="MovieLens next-item ranking: baselines and the recommender")
    parser.add_argument("--users", type=int, default=None, help="a seeded subsample of users (default: all 610)")
    parser.add_argument("--llm-candidates", type=int, default=50, help="shortlist the LLM scores per user")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    report = evaluate(get_settings(), out_dir=args.out, users=args.users, llm_candidates=args.llm_candidates)
    print_report(report, Console())
    print(f"report: {args.out / 'quality_recommend_ranking.json'} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
