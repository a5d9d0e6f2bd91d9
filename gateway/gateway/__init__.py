"""ModelGate gateway: the only public entry point."""
