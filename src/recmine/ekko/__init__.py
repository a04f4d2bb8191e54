"""recmine.ekko: see README for the public API."""
