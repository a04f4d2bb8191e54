"""The parameter-server protocol: the sharded versioned store, the Pull rounds without I/O, the SLO-aware scheduler,
the wire format (ekko.proto), the gRPC server (peer.py) and client, and the baselines it replaces."""
