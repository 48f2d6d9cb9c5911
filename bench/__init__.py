"""Benchmarks of Onramp against floors measured in the same run (`make bench`)."""
