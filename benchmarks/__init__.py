"""ShopRec benchmarks: quality under privacy, DP training speed, pipeline scaling, serving, scoring, text.

``python -m benchmarks.run --full`` (``make bench``) writes ``docs/benchmarks.md``, ``docs/benchmarks.json``
and PNG plots under ``docs/benchmarks/``; ``--quick`` (``make bench-quick``) runs reduced sizes and writes
below ``$SHOPREC_HOME/benchmarks/quick/`` unless ``--out`` says otherwise.  Benchmarks measure; the test
suite never asserts a timing.
"""
