"""The model repository: `<name>/<version>/model-settings.json` folders, loaded by the runtime they name."""
