"""Benchmarks for hmac-gateway: throughput and CPU against a plain aiohttp proxy, micro, memory.

See bench/README.md. Nothing here is imported by the gateway or by the tests.
"""
