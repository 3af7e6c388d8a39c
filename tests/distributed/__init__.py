"""Multi-node tests (several Ray nodes on this machine).

This directory is a package so that its conftest.py is imported as `distributed.conftest`: a second top-level
`conftest` module would replace tests/conftest.py in sys.modules and break every `from conftest import ...`.
"""
