"""numgpt ops."""
