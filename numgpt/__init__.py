"""numgpt."""
