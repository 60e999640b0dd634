"""LoRA kernels: apply a different adapter to each token of a batch.

``add_lora`` is what the model layers call; it picks the Triton kernels for CUDA tensors
when Triton is installed and the torch path otherwise (see docs/kernels.md).
"""

from loraserve.kernels.batch import NO_ADAPTER, LoRABatch, segment_table
from loraserve.kernels.dispatch import add_lora, backend_for, paged_decode_available
from loraserve.kernels.operands import LoRAOperands

__all__ = ["NO_ADAPTER", "LoRABatch", "LoRAOperands", "add_lora", "backend_for", "paged_decode_available", "segment_table"]
