"""Running the whole stack on one machine (ehrsim, receiver, workers, beat) as real processes, for the
end-to-end tests, ``make demo`` and the benchmarks. Not used in production."""
