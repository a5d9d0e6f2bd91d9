"""One router per resource, each under its own prefix (`/v2/models`, `/v2/repository`, `/v1/models`, ...)."""
