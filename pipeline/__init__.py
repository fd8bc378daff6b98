"""journeywatch's domain core: pure Python over plain data, no broker, database or metrics."""

__version__ = "0.1.0"
