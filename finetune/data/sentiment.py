"""The sentiment training set: Financial PhraseBank (50Agree minus the standard test split) and TFNS.

Standard split: FPB test = finlora_test/fpb_test.jsonl (1,212 rows, the FinGPT/FinLoRA test split of
50Agree); train on the 50Agree sentences not in it. TFNS sent_train.csv: a fixed, stratified 15% is
held out for evaluation and never trained on. The readers and the prompt are ``domains.sentiment``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from domains.sentiment import LabelledText, read_fpb, read_fpb_test, read_tfns


def match_key(text: str) -> str:
    """A key that survives the encoding damage between copies of the same sentence."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def fpb_train(fpb_path: Path, test_rows: list[LabelledText]) -> list[LabelledText]:
    held_out = {match_key(r.text) for r in test_rows}
    return [r for r in read_fpb(fpb_path) if match_key(r.text) not in held_out]


def stratified_split(
    rows: list[LabelledText], held_out_share: float, seed: int
) -> tuple[list[LabelledText], list[LabelledText]]:
    """(train, held_out), the same for the same rows and seed."""
    rng = random.Random(seed)
    train, held = [], []
    for label in sorted({r.label for r in rows}):
        group = [r for r in rows if r.label == label]
        rng.shuffle(group)
        cut = round(len(group) * held_out_share)
        held.extend(group[:cut])
        train.extend(group[cut:])
    return train, held


@dataclass
class SentimentSplits:
    train: list[LabelledText]
    fpb_test: list[LabelledText]
    tfns_held_out: list[LabelledText]


def build_splits(fpb_path: Path, fpb_test_path: Path, tfns_path: Path, seed: int = 42) -> SentimentSplits:
    fpb_test = read_fpb_test(fpb_test_path)
    tfns_train, tfns_held = stratified_split(read_tfns(tfns_path), 0.15, seed)
    return SentimentSplits(train=fpb_train(fpb_path, fpb_test) + tfns_train, fpb_test=fpb_test, tfns_held_out=tfns_held)
