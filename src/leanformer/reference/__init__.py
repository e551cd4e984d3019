"""leanformer.reference."""
