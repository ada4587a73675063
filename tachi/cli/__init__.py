"""The ``tachi`` command line: thin clients of the daemon."""
