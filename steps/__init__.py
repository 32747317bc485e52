"""ZenML steps: thin adapters over qaforge's library functions."""

from qaforge.logs import quiet_libraries

# Wherever a step runs (in this process or an orchestrator's container), library
# INFO logs stay out of the way; the pipeline turns them back on with `verbose: true`.
quiet_libraries()
