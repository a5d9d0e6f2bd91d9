"""One router per resource, mounted under the version prefix."""
