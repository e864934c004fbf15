"""Where a merge goes: a PEFT adapter folder, a fused model folder, or a new adapter in a PeftModel.

Each sink has `prepare(plan)` (every check it can make before compute) and
`write(plan, merger, report, facts)` (pulls merged modules from the merger in its own order).
"""

from .adapter_folder import AdapterFolderSink
from .fused_model import FusedModelSink
from .peft_model import PeftModelSink

__all__ = ["AdapterFolderSink", "FusedModelSink", "PeftModelSink"]
