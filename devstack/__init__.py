"""Running the whole stack on one machine (ehrsim, receiver, workers, beat) as real processes, for the
end-to-end tests, ``make demo`` and the benchmarks. Not part of the product: it imports ``app`` and
``ehrsim``; ``app`` never imports it (``tests/test_layout.py``) and the production image does not ship it.
"""
