"""recmine.g2miner: see README for the public API."""
