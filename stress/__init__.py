"""The hostile suite: what an attacker would try against a running gittornado, bounded and on loopback.

``python -m stress`` runs every scenario at full size against the real server
(the ``gittornado`` command) and prints its figures: tries, 5xx answers,
leftovers (git processes, quarantine directories, refs in between), threads
and open descriptors before and after. ``tests/test_hostile.py`` runs the same
scenarios small enough for CI, asserting on the same figures.

Every loop is bounded in count and in time; every connection goes to
127.0.0.0/8.
"""
