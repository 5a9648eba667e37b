"""`manage.py demo` (`make demo`): the run (run.py), its process supervisor (supervisor.py)
and how its calls travel (transport.py)."""
