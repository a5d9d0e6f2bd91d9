"""The Open Inference Protocol (KServe v2) data plane: types, tensor codec, REST endpoints."""
