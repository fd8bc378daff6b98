"""journeywatch's domain core: pure Python over plain data, no broker, database or metrics."""

from pipeline._compiled import activate as _activate

__version__ = "0.1.0"
__path__ = _activate(__path__)  # the mypyc-compiled engine when built (pipeline/_compiled.py)
