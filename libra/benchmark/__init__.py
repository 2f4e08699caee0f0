"""Benchmarks: VQA accuracy and caption metrics scored like the official tools, and the runner.

The metric modules import neither torch nor anything else of libra; keep this file empty of imports.
"""
