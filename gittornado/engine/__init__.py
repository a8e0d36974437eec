"""The engine: every git the server runs, whatever the transport (``Engine``, ``GitRun``)."""
