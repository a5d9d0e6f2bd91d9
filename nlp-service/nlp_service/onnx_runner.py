"""Sentiment runner on ONNX Runtime: the `sentiment-onnx` artifact (see export_sentiment_onnx.py).

Tokenisation and the response are the torch runner's; the network is the exported one, int8 or fp32
as its manifest says (with its own held-out accuracy and its distance from torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
from transformers import AutoTokenizer

from modelgate_core.artifacts import Manifest
from modelgate_core.onnx_session import create_session
from modelgate_core.schemas.nlp import SentimentLabel
from nlp_service.runners import DEFAULT_MAX_LENGTH, SentimentRunner


class OnnxSentimentRunner(SentimentRunner):
    """The fine-tuned MiniLM exported to ONNX; `torch_threads` sets ORT's intra-op threads."""

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        extra = manifest.extra
        self.max_length = int(extra.get("max_length", DEFAULT_MAX_LENGTH))
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.labels = [str(label).lower() for label in extra["labels"]]
        expected = set(get_args(SentimentLabel))
        if set(self.labels) != expected or len(self.labels) != len(expected):
            raise ValueError(
                f"sentiment artifact has labels {self.labels}, the API expects {sorted(expected)}"
            )
        self.input_names = [str(name) for name in extra["input_names"]]
        self.session: Any = create_session(model_dir / str(extra["onnx_file"]), self.torch_threads)
        # One warm-up pass, so that the first request does not pay for lazy initialisation.
        self.predict(["warm-up"])

    def predict(self, batch: Sequence[str]) -> Sequence[np.ndarray[Any, Any]]:
        with self._tokenizer_lock:
            encoded = self.tokenizer(
                list(batch), padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
            )
        logits = self.session.run(None, {name: encoded[name] for name in self.input_names})[0]
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return list((exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32))
