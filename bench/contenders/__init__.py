"""One module per contender; each runs as its own process (``python -m bench.contenders.X``)."""
