"""What a cell loads: models and tokenizers (models, hub), and examples from offline corpora, hub datasets or local
files (examples, datasets_io)."""
