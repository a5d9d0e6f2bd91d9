"""Sentiment runner: a sequence-classification transformer saved with `save_pretrained` by the build."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from modelgate_core.artifacts import Manifest
from modelgate_core.model import ModelRunner
from modelgate_core.schemas.nlp import SentimentLabel, SentimentPrediction

DEFAULT_MAX_LENGTH = 128


class SentimentRunner(ModelRunner[str, SentimentPrediction]):
    """Tokenises a batch of texts together (padded, truncated) and returns the most likely label."""

    def __init__(self, *, torch_threads: int) -> None:
        self.torch_threads = torch_threads
        # A fast tokenizer is not safe to call from two threads at once ("Already borrowed"), which
        # would happen if the service's inference concurrency were raised above 1.
        self._tokenizer_lock = threading.Lock()

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        torch.set_num_threads(self.torch_threads)
        self.max_length = int(manifest.extra.get("max_length", DEFAULT_MAX_LENGTH))
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model: Any = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
        self.model.eval()
        id2label = {int(i): str(label).lower() for i, label in self.model.config.id2label.items()}
        expected = set(get_args(SentimentLabel))
        if set(id2label.values()) != expected or len(id2label) != len(expected):
            # The artifact and the API schema must agree on the labels, or responses would not validate.
            raise ValueError(f"sentiment artifact has labels {id2label}, the API expects {sorted(expected)}")
        self.labels = [id2label[i] for i in range(len(id2label))]
        # One warm-up pass, so that the first request does not pay for lazy initialisation.
        self.predict(["warm-up"])

    def preprocess(self, item: str) -> str:
        # Tokenising the whole batch at once (in `predict`) pads it to its longest text only.
        return item

    def predict(self, batch: Sequence[str]) -> Sequence[np.ndarray[Any, Any]]:
        with self._tokenizer_lock:
            encoded = self.tokenizer(
                list(batch), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(**encoded).logits, dim=-1)
        return list(probabilities.float().numpy())

    def postprocess(self, raw: np.ndarray[Any, Any]) -> SentimentPrediction:
        class_id = int(np.argmax(raw))
        return SentimentPrediction(
            label=self.labels[class_id],  # type: ignore[arg-type]
            score=round(float(raw[class_id]), 6),
        )
