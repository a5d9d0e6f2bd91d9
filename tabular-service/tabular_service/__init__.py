"""ModelGate tabular model server."""
