"""Lean attention for patched models: the chunked flash / Tempo Function (core), HF glue (hf), reference."""
