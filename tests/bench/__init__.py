"""`make bench`: indexing, fidelity and start-up benchmarks (figures and ratios, never assertions).

Run `python -m tests.bench.bench --help`. Data and models are generated and cached under .bench/.
"""
