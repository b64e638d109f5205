"""The `t5pipe` commands: each module parses its flags and calls the library (`main`).

Nothing in the library imports these modules; `t5pipe.cli` dispatches to them and maps
the errors they raise onto exit codes.
"""
