"""The sentiment model served with LitServe, the idiomatic way: a `LitAPI` with dynamic batching.

    python scripts/peers/litserve_sentiment.py [--port 8100] [--max-batch-size 16] [--batch-timeout 0.01]

`POST /predict {"text": "..."}` answers `{"label": "positive"|"negative", "score": p}`; `GET /health`
is LitServe's own readiness check (200 once the inference worker has run `setup`).
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time to
# build the endpoint (a pydantic model there means FastAPI validates the body, as ModelGate does).
import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from typing import Any

import litserve as ls
import torch
from pydantic import BaseModel, Field
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MODEL_DIR = os.environ.get("MODEL_DIR", "artifacts/sentiment")
MAX_LENGTH = 64  # what the artifact's manifest says ModelGate uses


class TextRequest(BaseModel):
    text: str = Field(min_length=1, max_length=5000)


class SentimentAPI(ls.LitAPI):  # type: ignore[misc]
    """Tokenise and classify a batch of texts at once."""

    def setup(self, device: str) -> None:
        self.device = device
        self.tokenizer: Any = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
        self.model: Any = AutoModelForSequenceClassification.from_pretrained(MODEL_DIR, local_files_only=True)
        self.model.to(device).eval()
        self.labels = [
            str(self.model.config.id2label[i]).lower() for i in range(self.model.config.num_labels)
        ]

    def decode_request(self, request: TextRequest, **kwargs: Any) -> str:
        return request.text

    def predict(self, texts: str | list[str], **kwargs: Any) -> Any:
        """A batch of texts (a single one when the server runs with max_batch_size=1)."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        encoded = self.tokenizer(
            batch, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(**encoded).logits, dim=-1)
        scores, ids = probabilities.max(dim=-1)
        results = [(int(i), float(s)) for i, s in zip(ids.tolist(), scores.tolist(), strict=True)]
        return results[0] if single else results

    def encode_response(self, output: tuple[int, float], **kwargs: Any) -> dict[str, Any]:
        class_id, score = output
        return {"label": self.labels[class_id], "score": round(score, 6)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds to wait to fill a batch")
    args = parser.parse_args()
    api = SentimentAPI(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
