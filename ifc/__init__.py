"""ifc-sandbox: information-flow control for AI agents working on real projects."""

__version__ = "0.1.0"
