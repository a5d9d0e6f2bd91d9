"""ModelGate's shared runtime library: what the gateway and every model service have in common."""
