"""Tokenizer training, corpus sources, shard preparation and the packed token loader."""
