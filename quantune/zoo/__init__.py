"""Registry of real models and their data (bundled example, EfficientNet-Lite0, MiniLM-L6)."""
