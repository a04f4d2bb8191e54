"""recmine.faery: see README for the public API."""
