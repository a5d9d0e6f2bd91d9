"""The sentiment model served the way FastAPI tutorials teach: loaded at import, a sync endpoint.

    python -m uvicorn --app-dir scripts/peers fastapi_sentiment:app --port 8101

No batching, no concurrency control: FastAPI runs the `def` endpoint in its thread pool, so concurrent
requests call the model (and the tokenizer) from several threads at once. That is the point of the
comparison; do not "fix" it here.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MODEL_DIR = os.environ.get("MODEL_DIR", "artifacts/sentiment")

tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
model = AutoModelForSequenceClassification.from_pretrained(MODEL_DIR)
model.eval()

app = FastAPI(title="Sentiment (tutorial style)")


class TextIn(BaseModel):
    text: str


class SentimentOut(BaseModel):
    label: str
    score: float


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
def predict(item: TextIn) -> SentimentOut:
    inputs = tokenizer(item.text, return_tensors="pt", truncation=True, max_length=64)
    with torch.no_grad():
        logits = model(**inputs).logits
    probabilities = torch.softmax(logits, dim=-1)[0]
    class_id = int(probabilities.argmax())
    return SentimentOut(
        label=str(model.config.id2label[class_id]).lower(), score=float(probabilities[class_id])
    )
