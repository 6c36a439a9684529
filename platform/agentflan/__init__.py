"""agentflan: an open, Ray-native implementation of Agent-FLAN (arXiv 2403.12881)."""

__version__ = "0.1.0"
