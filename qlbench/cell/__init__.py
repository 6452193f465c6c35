"""One cell: `run` (run.py) calls its stages in order — context, load, quantize, attach, evaluate, train, write —
and the parts they use: the training loop, LoRA, switchable precision, gradient variance, the Fisher probe."""
