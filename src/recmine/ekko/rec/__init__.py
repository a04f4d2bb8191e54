"""The recommender around the parameter servers: the PyTorch model and its online trainer, serving, the model state
manager (guard) and the interaction data."""
