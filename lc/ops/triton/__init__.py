"""Triton (CUDA) kernels of the compressed region convolution.

`gather_conv(src, table, weight, bias)` is the GPU implementation of
`lc.ops.region_conv.gather_conv` (which dispatches here for CUDA tensors); `gather_conv(...,
residual=, scale=, relu=)` and `gather_linear` fuse the IRNet blocks' epilogues. Importing works
on any machine with triton installed (it ships with torch); running needs CUDA tensors, or
TRITON_INTERPRET=1 set before triton is first imported (the CPU interpreter the tests use).
"""

from lc.ops.triton.region_gemm import INTERPRET, gather_conv, gather_linear, transposed_table

__all__ = ["INTERPRET", "gather_conv", "gather_linear", "transposed_table"]
