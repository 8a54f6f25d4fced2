"""The frameworks people load models with: transformers and sentence-transformers (`hf`)."""
