"""ModelGate NLP model server.

The service never downloads anything: the model and tokenizer come from the artifact folder. The Hugging
Face libraries read these variables when they are first imported, so they are set here, before any
module of this package imports them.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The fast tokenizer's own thread pool would compete with torch's threads (and warns after a fork).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
