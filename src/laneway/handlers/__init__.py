"""Model handlers the gateway can serve: ``demo`` (built in) and ``openai``."""
