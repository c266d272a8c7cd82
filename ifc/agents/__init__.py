"""Real coding agents for `ifc run --preset NAME`: what each one is (`catalog`) and the cached, versioned layer
it is installed into on the host and shown read-only to the sandbox (`layer`)."""
