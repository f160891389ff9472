"""MediSync agent benchmark harness (issue 6).

Run ``.venv/bin/python -m benchmarks [--quick] [--only NAME] [--out DIR]``; it prints each scenario's figures and
writes ``RESULTS.md``, ``results.json`` and PNG plots (default: into this folder). See ``NOTES.md`` for how each
figure is measured. Scenarios live in :mod:`benchmarks.scenarios`; each agent runs as its own process
(:mod:`benchmarks.agent_proc`) against the local server run as a process.
"""
