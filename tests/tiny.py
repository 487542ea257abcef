"""Tiny random HF checkpoints (written by transformers' save_pretrained) with a real BPE tokenizer.

Used by the engine and end-to-end CLI tests. torch is a test-only dependency.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1")  # a CPU run without progress bars
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOCAB = 512


def shared_text(name: str = "wiki_train.txt") -> Path:
    """A real text file from ../shared/data (CI lays shared/ beside the clone)."""
    for d in (os.environ.get("OPTIMA_JAX_DATA_DIR"), SHARED_DATA, Path.home() / ".cache/optima_jax/data"):
        if d and (Path(d) / name).exists():
            return Path(d) / name
    raise FileNotFoundError(f"{name} not found in ../shared/data or the optima_jax asset cache")


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = shared_text().read_text()[:400_000]
    tok.train_from_iterator([text[i : i + 2000] for i in range(0, len(text), 2000)], trainer)
    return tok.to_str()


def save_tokenizer(path: Path, adds_bos: bool = False):
    """The tiny BPE tokenizer; `adds_bos`: its default encoding starts with <bos>, as LLaMA-3's does (else it adds
    nothing, as SmolLM2's and Qwen's)."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(_tokenizer_json())
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(str(path))


def hf_config(family: str, **over):
    import transformers as tf

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    common.update(over)
    if family == "llama":
        return tf.LlamaConfig(
            head_dim=16,
            tie_word_embeddings=True,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            **common,
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            head_dim=16,
            sliding_window=8,
            query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            **common,
        )
    if family == "gemma2":  # soft-capping small enough to act on random weights
        return tf.Gemma2Config(
            head_dim=16,
            sliding_window=8,
            query_pre_attn_scalar=16,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            **common,
        )
    if family == "qwen2":
        return tf.Qwen2Config(tie_word_embeddings=False, **common)
    if family == "qwen3":  # head_dim != hidden / heads, tied head, q/k norms (random in make_checkpoint)
        return tf.Qwen3Config(head_dim=24, tie_word_embeddings=True, **common)
    if family == "mistral":  # a window shorter than the calibration windows
        return tf.MistralConfig(sliding_window=8, tie_word_embeddings=False, **common)
    raise ValueError(family)


def make_checkpoint(path: Path, family: str = "llama", seed: int = 0, tokenizer_adds_bos: bool = False, **over) -> Path:
    """Write a tiny random `family` checkpoint (config.json, model.safetensors, tokenizer) to `path`."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(hf_config(family, **over)).to(torch.float32)
    with torch.no_grad():  # random norm weights so that (1 + w) vs w conventions matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.2)
    path = Path(path)
    model.save_pretrained(str(path), safe_serialization=True)
    save_tokenizer(path, adds_bos=tokenizer_adds_bos)
    return path


def run_args(model_dir, out, *extra, nsamples: int = 4) -> list[str]:
    """``optima-prune`` arguments (after the program name) for a small run of ``model_dir`` into ``out``."""
    return [
        "--config",
        "base",
        f"--config.model={model_dir}",
        f"--config.output_dir={out}",
        f"--config.calibration.source={shared_text('wiki_train.txt')}",
        f"--config.calibration.nsamples={nsamples}",
        "--config.calibration.seqlen=32",
        "--config.calibration.micro_batch=4",
        *extra,
    ]


def run_module(module: str, *args, cwd=None, env=ENV, timeout=None) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as a user runs it (from the repository unless ``cwd``), output captured."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    return subprocess.run(cmd, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout)
