"""recmine: fresh models (ekko), exact retrieval (faery) and fast graph mining (g2miner) for recommenders."""

__version__ = "0.1.0"
