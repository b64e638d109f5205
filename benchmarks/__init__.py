"""Throughput / MFU / decode-speed / data-speed harness: `python -m benchmarks.run --help`."""
