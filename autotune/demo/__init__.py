"""The embedded CPU demo: its corpus (math, code, prose), tokenizer and pre-trained tiny base model.
Core code sees only what these produce: document sources and a checkpoint folder."""
