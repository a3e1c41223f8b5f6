"""keel's node autoscaler.

decide (pure), loop (triggers, state, journal), actuators (executors, providers, inventory).
"""

__version__ = "1.0.0"
