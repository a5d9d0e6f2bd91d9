"""ModelGate load test: users who call every public route with real payloads.

    MODELGATE_API_KEY=mg_... locust -f loadtests/locustfile.py --config loadtests/smoke.conf --host URL

or let `loadtests/run.py` (`make loadtest`, `make loadtest-smoke`) start a local stack and make a key.

Each simulated user waits 0.5-2 s between requests and picks a route by weight: mostly tabular (iris,
fraud), then sentiment, some image classification, now and then the model catalogue. Payloads are real:
flowers from the iris data set, the fraud examples the gateway documents in its /openapi.json (read at
start), the two photos in tests/assets/, and ordinary review- and tweet-like sentences. Every answer is
checked: a 200 whose body has the wrong shape, or that lacks the request ID we sent, is a failure.

Tasks are tagged by domain (`tabular`, `vision`, `nlp`, `catalog`, `versions`), so `--tags vision`
loads one service only. `versions` has two scenarios on iris over the OIP routes: clients pinned to a
version (the versioned URL must answer with it) and clients that follow the canary (the unversioned URL;
each request is named after the version that answered, so the table shows the split).

At the end the run fails (exit code 1) when the failure ratio is above LOADTEST_MAX_FAIL_RATIO (default
0) or the overall p95 is above LOADTEST_P95_MS (default 2000 ms); in a distributed run the master
decides, on the aggregated figures.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from locust import HttpUser, between, events, tag, task
from locust.clients import ResponseContextManager
from locust.env import Environment
from locust.runners import WorkerRunner

logger = logging.getLogger("modelgate.loadtest")

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
IMAGES = {name: (ASSETS / name).read_bytes() for name in ("coffee.jpg", "chelsea.jpg")}

IRIS_NAMES = ("setosa", "versicolor", "virginica")
# Real flowers from the iris data set (Fisher, 1936), with their recorded species.
IRIS_SAMPLES: list[tuple[dict[str, float], str]] = [
    (dict(zip(("sepal_length", "sepal_width", "petal_length", "petal_width"), row, strict=True)), species)
    for row, species in [
        ((5.1, 3.5, 1.4, 0.2), "setosa"),
        ((4.9, 3.0, 1.4, 0.2), "setosa"),
        ((4.7, 3.2, 1.3, 0.2), "setosa"),
        ((5.0, 3.6, 1.4, 0.2), "setosa"),
        ((5.4, 3.9, 1.7, 0.4), "setosa"),
        ((4.6, 3.4, 1.4, 0.3), "setosa"),
        ((7.0, 3.2, 4.7, 1.4), "versicolor"),
        ((6.4, 3.2, 4.5, 1.5), "versicolor"),
        ((5.5, 2.3, 4.0, 1.3), "versicolor"),
        ((6.5, 2.8, 4.6, 1.5), "versicolor"),
        ((5.7, 2.8, 4.5, 1.3), "versicolor"),
        ((6.3, 3.3, 4.7, 1.6), "versicolor"),
        ((6.3, 3.3, 6.0, 2.5), "virginica"),
        ((5.8, 2.7, 5.1, 1.9), "virginica"),
        ((7.1, 3.0, 5.9, 2.1), "virginica"),
        ((6.3, 2.9, 5.6, 1.8), "virginica"),
        ((6.5, 3.0, 5.8, 2.2), "virginica"),
        ((7.6, 3.0, 6.6, 2.1), "virginica"),
    ]
]

SENTENCES = [
    "I love this product, it works exactly as described!",
    "Absolutely terrible customer service, I waited two hours and nobody answered.",
    "The delivery was quick and the headphones sound great.",
    "Worst purchase I've made this year. It broke after one day.",
    "Just finished the book and honestly it was one of the best I've read in ages",
    "My flight got cancelled again, this airline is a joke",
    "Such a lovely afternoon at the park with the kids :)",
    "The update deleted all my notes. I am furious.",
    "Great value for the price, would definitely recommend to a friend.",
    "The soup was cold and the waiter was rude.",
    "Can't stop listening to the new album, every track is a banger",
    "Battery life is awful, barely lasts half a day.",
    "Thank you so much for the quick refund, really appreciated!",
    "Traffic this morning was a nightmare, late for work again",
    "The hotel room was spotless and the staff were incredibly friendly.",
    "I regret signing up for this subscription, cancelling it today.",
    "Happy birthday to my best friend, love you lots!",
    "The app keeps crashing every time I open the camera. Useless.",
    "Finally got the promotion I worked so hard for!!",
    "The instructions were confusing and two screws were missing from the box.",
    "What a match! Proud of the team tonight.",
    "I'm so tired of these endless meetings that could have been an email",
    "Beautiful sunset over the lake tonight, feeling grateful.",
    "The package arrived damaged and the support chat just keeps looping.",
    "Solid build quality, setup took five minutes, no complaints so far.",
    "This movie was a complete waste of time and money.",
]

# The fraud examples documented in the gateway's OpenAPI schema; filled at test start.
FRAUD_EXAMPLES: list[dict[str, Any]] = []


def api_key() -> str:
    key = os.environ.get("MODELGATE_API_KEY", "").strip()
    if not key:
        raise RuntimeError("set MODELGATE_API_KEY (or run loadtests/run.py, which makes one for its stack)")
    return key


def load_fraud_examples(host: str) -> None:
    """Read the documented FraudTransaction examples from the gateway's /openapi.json (once)."""
    if FRAUD_EXAMPLES:
        return
    response = requests.get(host.rstrip("/") + "/openapi.json", timeout=30)
    response.raise_for_status()
    examples = response.json()["components"]["schemas"]["FraudTransaction"]["examples"]
    if not examples:
        raise RuntimeError("the gateway's OpenAPI schema has no FraudTransaction examples")
    FRAUD_EXAMPLES.extend(examples)


@events.test_start.add_listener
def on_test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or not environment.host:
        return  # workers load the examples when their first user starts (they learn the host then)
    load_fraud_examples(environment.host)


@events.quitting.add_listener
def enforce_thresholds(environment: Environment, **_: Any) -> None:
    """Exit code 1 when failures or the p95 exceed the limits (the master judges aggregated stats)."""
    if isinstance(environment.runner, WorkerRunner):
        return
    total = environment.stats.total
    max_fail_ratio = float(os.environ.get("LOADTEST_MAX_FAIL_RATIO", "0"))
    p95_limit_ms = float(os.environ.get("LOADTEST_P95_MS", "2000"))
    p95 = total.get_response_time_percentile(0.95) if total.num_requests else math.nan
    problems = []
    if total.num_requests == 0:
        problems.append("no requests were made")
    if total.fail_ratio > max_fail_ratio:
        problems.append(
            f"failure ratio {total.fail_ratio:.4f} > {max_fail_ratio} ({total.num_failures} failures)"
        )
    if total.num_requests and p95 > p95_limit_ms:
        problems.append(f"p95 {p95:.0f} ms > {p95_limit_ms:.0f} ms")
    if problems:
        logger.error("load test FAILED: %s", "; ".join(problems))
        environment.process_exit_code = 1
    else:
        logger.info(
            "load test passed: %d requests, failure ratio %.4f <= %s, p95 %.0f ms <= %.0f ms",
            total.num_requests,
            total.fail_ratio,
            max_fail_ratio,
            p95,
            p95_limit_ms,
        )
        environment.process_exit_code = 0


class Invalid(Exception):
    """An answer with the wrong status or shape."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Invalid(message)


def check_model(body: dict[str, Any], name: str) -> None:
    model = body.get("model")
    expect(isinstance(model, dict) and model.get("name") == name, f"model is not {name!r}: {model}")
    expect(bool(model and model.get("version")), "model version missing")  # type: ignore[union-attr]


def check_iris(item: dict[str, Any], expected: str | None) -> None:
    label, probabilities = item.get("label"), item.get("probabilities")
    expect(label in IRIS_NAMES, f"unknown iris label {label!r}")
    expect(item.get("class_id") == IRIS_NAMES.index(label), "class_id does not match the label")
    expect(isinstance(probabilities, dict) and set(probabilities) == set(IRIS_NAMES), "bad probabilities")
    expect(abs(sum(probabilities.values()) - 1) < 1e-3, "probabilities do not sum to 1")  # type: ignore[union-attr]
    # Setosa is linearly separable from the rest: any working model gets those flowers right.
    if expected == "setosa":
        expect(label == "setosa", f"a setosa flower was called {label}")


def check_sentiment(item: dict[str, Any]) -> None:
    expect(item.get("label") in ("positive", "negative"), f"bad sentiment label {item.get('label')!r}")
    score = item.get("score")
    expect(isinstance(score, int | float) and 0 <= score <= 1, f"bad score {score!r}")


class ModelGateUser(HttpUser):
    """An API client: mostly tabular scoring, sentiment, some photos, now and then the catalogue."""

    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self._versions: list[str] = []
        self._versions_at = 0.0
        self.client.headers.update({"X-API-Key": api_key(), "User-Agent": "modelgate-loadtest"})
        if not FRAUD_EXAMPLES and self.host:
            try:
                load_fraud_examples(self.host)
            except (requests.RequestException, KeyError, RuntimeError) as exc:
                logger.error("could not read the fraud examples from /openapi.json: %r", exc)
        # Like a real client, look at the catalogue first (so every run exercises it, whatever the tags).
        self.models()

    def call(
        self,
        path: str,
        check: Callable[[dict[str, Any]], None],
        *,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """POST (or GET without a body) with our own request ID; fail unless 200 + right shape + ID echo."""
        request_id = f"lt-{uuid.uuid4().hex}"
        method = "POST" if ("json" in kwargs or "files" in kwargs) else "GET"
        with self.client.request(
            method,
            path,
            name=name or path,
            headers={"X-Request-ID": request_id},
            catch_response=True,
            **kwargs,
        ) as response:
            self.judge(response, request_id, check)

    @staticmethod
    def judge(
        response: ResponseContextManager, request_id: str, check: Callable[[dict[str, Any]], None]
    ) -> None:
        try:
            expect(response.status_code == 200, f"HTTP {response.status_code}: {response.text[:200]}")
            expect(response.headers.get("x-request-id") == request_id, "X-Request-ID not echoed")
            body = response.json()
            expect(isinstance(body, dict), "body is not a JSON object")
            check(body)
        except (Invalid, ValueError, TypeError, KeyError, AttributeError) as exc:
            response.failure(f"{type(exc).__name__}: {exc}")
        else:
            response.success()

    # --- tabular ---------------------------------------------------------------------------------

    @tag("tabular")
    @task(8)
    def iris(self) -> None:
        features, species = random.choice(IRIS_SAMPLES)

        def check(body: dict[str, Any]) -> None:
            check_iris(body, species)
            check_model(body, "iris")

        self.call("/v1/tabular/iris", check, json=features)

    @tag("tabular")
    @task(2)
    def iris_batch(self) -> None:
        picked = random.choices(IRIS_SAMPLES, k=random.randint(2, 20))

        def check(body: dict[str, Any]) -> None:
            results = body.get("results")
            expect(isinstance(results, list) and len(results) == len(picked), "wrong number of results")
            for item, (_, species) in zip(results, picked, strict=True):  # type: ignore[arg-type]
                check_iris(item, species)
            check_model(body, "iris")

        self.call("/v1/tabular/iris/batch", check, json={"instances": [f for f, _ in picked]})

    @tag("tabular")
    @task(5)
    def fraud(self) -> None:
        if not FRAUD_EXAMPLES:
            events.request.fire(
                request_type="POST",
                name="/v1/tabular/fraud",
                response_time=0,
                response_length=0,
                exception=Invalid("no fraud examples: /openapi.json could not be read"),
                context={},
            )
            return
        transaction = dict(random.choice(FRAUD_EXAMPLES))
        # The same card and terminal history, a slightly different amount each time.
        transaction["tx_amount"] = round(transaction["tx_amount"] * random.uniform(0.8, 1.2), 2)

        def check(body: dict[str, Any]) -> None:
            probability, threshold = body.get("fraud_probability"), body.get("threshold")
            expect(isinstance(probability, float | int) and 0 <= probability <= 1, "bad fraud_probability")
            expect(isinstance(threshold, float | int) and 0 <= threshold <= 1, "bad threshold")
            expect(body.get("is_fraud") == (probability >= threshold), "is_fraud disagrees with threshold")  # type: ignore[operator]
            check_model(body, "fraud")

        self.call("/v1/tabular/fraud", check, json=transaction)

    # --- nlp ---------------------------------------------------------------------------------------

    @tag("nlp")
    @task(6)
    def sentiment(self) -> None:
        def check(body: dict[str, Any]) -> None:
            check_sentiment(body)
            check_model(body, "sentiment")

        self.call("/v1/nlp/sentiment", check, json={"text": random.choice(SENTENCES)})

    @tag("nlp")
    @task(2)
    def sentiment_batch(self) -> None:
        texts = random.sample(SENTENCES, k=random.randint(2, 8))

        def check(body: dict[str, Any]) -> None:
            results = body.get("results")
            expect(isinstance(results, list) and len(results) == len(texts), "wrong number of results")
            for item in results:  # type: ignore[union-attr]
                check_sentiment(item)
            check_model(body, "sentiment")

        self.call("/v1/nlp/sentiment/batch", check, json={"texts": texts})

    # --- vision ------------------------------------------------------------------------------------

    @tag("vision")
    @task(4)
    def classify(self) -> None:
        name = random.choice(list(IMAGES))
        top_k = random.randint(1, 5)

        def check(body: dict[str, Any]) -> None:
            predictions = body.get("predictions")
            expect(isinstance(predictions, list) and len(predictions) == top_k, "wrong number of predictions")
            scores = [p["score"] for p in predictions]  # type: ignore[union-attr]
            expect(all(0 <= s <= 1 for s in scores), "score out of [0, 1]")
            expect(scores == sorted(scores, reverse=True), "predictions not sorted by score")
            for p in predictions:  # type: ignore[union-attr]
                expect(isinstance(p["label"], str) and isinstance(p["class_id"], int), "bad prediction")
            if name == "coffee.jpg" and top_k == 5:
                labels = [p["label"] for p in predictions]  # type: ignore[union-attr]
                expect("espresso" in labels, f"the coffee photo was not espresso: {labels}")
            check_model(body, "imagenet")

        self.call(
            f"/v1/vision/classify?top_k={top_k}",
            check,
            name="/v1/vision/classify",
            files={"file": (name, IMAGES[name], "image/jpeg")},
        )

    # --- versions ----------------------------------------------------------------------------------

    def iris_versions(self) -> list[str]:
        """iris's versions as its metadata lists them (looked up again every 10 s: they change live)."""
        now = time.monotonic()
        if now - self._versions_at > 10 or not self._versions:
            with self.client.get("/v2/models/iris", name="/v2/models/iris", catch_response=True) as response:
                versions = response.json().get("versions") if response.status_code == 200 else None
                if isinstance(versions, list) and versions:
                    self._versions, self._versions_at = [str(v) for v in versions], now
                    response.success()
                else:
                    response.failure(f"HTTP {response.status_code}: no versions: {response.text[:200]}")
        return self._versions or ["1"]

    def oip_iris(self, path: str, check: Callable[[str], None], name: str) -> None:
        """An OIP infer of one flower; `check(version that answered)`; the request is named per version,
        so Locust's table shows the split a canary makes."""
        features, _ = random.choice(IRIS_SAMPLES)
        body = {
            "inputs": [
                {"name": "input", "datatype": "FP64", "shape": [1, 4], "data": list(features.values())}
            ]
        }
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            try:
                expect(response.status_code == 200, f"HTTP {response.status_code}: {response.text[:200]}")
                version = response.headers.get("x-model-version", "")
                expect(
                    response.json().get("model_version") == version, "model_version differs from the header"
                )
                check(version)
            except (Invalid, ValueError, AttributeError) as exc:
                response.failure(f"{type(exc).__name__}: {exc}")
            else:
                response.request_meta["name"] = f"{name} (version {version})"
                response.success()

    @tag("versions")
    @task(2)
    def iris_pinned_version(self) -> None:
        """A client pinned to one version: the versioned URL answers with that version, whatever the
        traffic of the unversioned routes."""
        wanted = random.choice(self.iris_versions())

        def check(version: str) -> None:
            expect(version == wanted, f"pinned to version {wanted}, answered by {version}")

        self.oip_iris(f"/v2/models/iris/versions/{wanted}/infer", check, "/v2/models/iris/versions/{v}/infer")

    @tag("versions")
    @task(2)
    def iris_follows_the_canary(self) -> None:
        """An unversioned client: the default or the canary answers, and says which."""
        known = self.iris_versions()

        def check(version: str) -> None:
            expect(version.isdigit(), f"no X-Model-Version: {version!r}")
            # A version added since the last metadata look is fine; one never listed would not be.
            if version not in known:
                self._versions_at = 0.0

        self.oip_iris("/v2/models/iris/infer", check, "/v2/models/iris/infer")

    # --- catalogue ---------------------------------------------------------------------------------

    @tag("catalog")
    @task(1)
    def models(self) -> None:
        def check(body: dict[str, Any]) -> None:
            names = {m.get("name") for m in body.get("models", [])}
            expect({"iris", "fraud", "imagenet", "sentiment"} <= names, f"catalogue lacks models: {names}")
            expect(body.get("unavailable") == [], f"services unavailable: {body.get('unavailable')}")

        self.call("/v1/models", check)
