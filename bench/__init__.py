"""gittornado benchmark: clone speed against git's own transports, server CPU and memory.

Run it with ``python bench/run.py`` or ``python -m bench`` (``--help`` for the options).
The modules:

* :mod:`bench.common`   - paths, logging, the hermetic git environment;
* :mod:`bench.fixtures` - the generated ~300 MiB repository and the random push data;
* :mod:`bench.servers`  - gittornado, ``git http-backend`` behind nginx + fcgiwrap, which code runs;
* :mod:`bench.measure`  - timing, CPU (``/proc/PID/stat``) and RSS (``/proc/PID/status``) sampling;
* :mod:`bench.clones`   - the clone scenario (floor, gittornado, peer; protocol v2 and v0);
* :mod:`bench.pushes`   - the push scenario (server RSS during 512 MiB and 1 GiB chunked pushes)
  and ``--storm``'s push gateway CPU against http-backend;
* :mod:`bench.storm`    - ``--storm``: the clone storm and the large clone with the pack cache;
* :mod:`bench.adverts`  - ``--storm``: ``info/refs`` requests per second and latency;
* :mod:`bench.scale`    - ``--storm``: ``info/refs`` with many refs, the index page with many repos;
* :mod:`bench.loadgen`  - a keep-alive HTTP load generator (``python -m bench.loadgen``);
* :mod:`bench.report`   - rows, the table, the JSON results file;
* :mod:`bench.cli`      - the command line and the run.
"""
