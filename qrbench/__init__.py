"""Benchmarks of the engine, outside it: each prints its timing beside a ratio to an oracle, a peer or the machine's
measured peak (`qrn bench ...`)."""
