"""recmine.ekko: low-latency model updates across data centres (see README for the public API).

Needs the `ekko` extra (gRPC for the parameter servers' network, PyTorch for the recommender): importing any ekko
module without it raises MissingExtraError naming `pip install 'recmine[ekko]'`."""

from recmine.extras import check

check("ekko", "grpc", "grpc_tools", "google.protobuf", "torch")
