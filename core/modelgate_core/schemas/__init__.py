"""The public API contract: request and response models shared by the gateway and the services."""
