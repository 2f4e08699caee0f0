"""Benchmarks: VQA accuracy and caption metrics scored like the official tools, and the runner
(``runner.evaluate``). The metric modules themselves import neither torch nor anything else of libra
(tests/benchmark/test_metrics_import_light.py); keep this file free of imports."""
