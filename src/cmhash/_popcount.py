"""The CPU's popcount instruction for numba kernels (metrics and index); needs the `fast` extra."""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def popcount(typingctx, x):
    """llvm.ctpop on an unsigned integer (one POPCNT instruction where the CPU has it), typed
    int64 so the arithmetic around it stays integer (numba turns int64 op uint64 into float64)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        res = builder.ctpop(args[0])
        return res if x.bitwidth == 64 else builder.zext(res, context.get_value_type(types.int64))

    return types.int64(x), codegen
