"""The chaos harness: workloads, nemeses, checkers and scenarios (issue 5).

``history`` holds the records a workload produces and ``checkers`` the pure verdicts over them;
neither does I/O or reads a clock.
"""
