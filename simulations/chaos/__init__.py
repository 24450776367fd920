"""The chaos harness: workloads, nemeses, checkers and scenarios (issue 5).

``history`` holds the records a workload produces and ``checkers`` the pure verdicts over them;
neither does I/O or reads a clock. ``model`` holds what a scenario is made of (scenarios,
criteria, fault steps) and imports nothing of the harness. Imports run one way: ``model`` <- the
fault modules (``nemesis``, ``storage_faults``, ``partitions``) <- ``scenarios`` (the registry)
<- ``runner``. ``collect`` (what a run reads back from the nodes) and ``report`` (the report it
returns) serve both runs, ``runner.run_scenario`` and ``partitions.run_network_scenario``.
"""
