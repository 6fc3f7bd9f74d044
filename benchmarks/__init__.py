"""keras-fpn benchmarks (run from the repository root).

``python -m benchmarks``            the performance suite (training throughput, Keras and
                                    TFLite latency, model sizes, peak RSS) -> results/suite.{md,json}
``python benchmarks/edge_memory.py`` RSS of 10,000 fpn_edge inferences -> results/edge_memory.{md,json}

See ``benchmarks/README.md``. Modules: ``machine`` (what ran it), ``suite`` (one
function per measurement), ``report`` (markdown + atomic JSON), ``edge_memory``.
"""
