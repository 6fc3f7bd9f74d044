"""One correctly scaled bias per call of a shared conv (a TF 2.21 int16x8 converter bug), in converted bytes.

A quantized conv's bias must have scale ``input_scale * weight_scale``. The
detection heads are shared across pyramid levels, so one Keras layer becomes
five CONV_2D ops with different input scales. TF 2.21's int16x8 quantizer
quantizes the (int64) bias once, with the first op's input scale, and gives
the same tensor to all five: every other level's bias comes out scaled by
``input_scale_k / input_scale_1`` (class logits saturated at the range limit;
measured relative RMSE 4.0 on the class logits). int8 conversion makes one
bias per op and is not affected.
"""
from __future__ import annotations

import numpy as np

from fpn_export.flatbuffer import op_name, read_model, schema, write_model

__all__ = ["fix_shared_biases"]

_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def _requantized_bias(m, sg, bias, values, scales, number: int) -> int:
    """Append a bias tensor (new buffer) with ``values`` and ``scales``; returns its index."""
    s = schema()
    new_buf = s.BufferT()
    new_buf.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
    m.buffers.append(new_buf)
    t = s.TensorT()
    t.shape, t.type, t.buffer = list(bias.shape), bias.type, len(m.buffers) - 1
    t.name = (bias.name.decode() if isinstance(bias.name, bytes) else str(bias.name)) + f"/requant_{number}"
    nq = s.QuantizationParametersT()
    nq.scale = [float(v) for v in np.asarray(scales).reshape(-1)]
    nq.zeroPoint = [0] * len(nq.scale)
    nq.quantizedDimension = bias.quantization.quantizedDimension
    t.quantization = nq
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def fix_shared_biases(data: bytes) -> tuple:
    """Give each op of a shared conv bias whose scale is wrong its own bias, rescaled.

    Returns:
        ``(bytes, number of ops given a new bias)``; the input unchanged when no
        op needs it.
    """
    s = schema()
    m = read_model(data)
    int_types = {s.TensorType.INT32: np.int32, s.TensorType.INT64: np.int64}
    fixed = 0
    for sg in m.subgraphs:
        users = {}
        for op in sg.operators or []:
            if op.inputs is not None and len(op.inputs) >= 3 and op.inputs[2] >= 0 and op_name(m, op) in _CONV_OPS:
                users.setdefault(int(op.inputs[2]), []).append(op)
        for bidx, ops in users.items():
            bias = sg.tensors[bidx]
            q = bias.quantization
            if len(ops) < 2 or bias.type not in int_types or q is None or q.scale is None:
                continue
            buf = m.buffers[bias.buffer]
            if buf.data is None or len(buf.data) == 0:
                continue
            stored = np.frombuffer(bytes(bytearray(buf.data)), dtype=int_types[bias.type]).astype(np.float64)
            s_stored = np.asarray(q.scale, np.float64)
            for op in ops:
                inp, w = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
                if inp.quantization is None or inp.quantization.scale is None or w.quantization is None:
                    continue
                expected = float(np.asarray(inp.quantization.scale)[0]) * np.asarray(w.quantization.scale, np.float64)
                expected = np.broadcast_to(expected, s_stored.shape) if expected.size == 1 else expected
                if np.allclose(expected, s_stored, rtol=1e-6, atol=0):
                    continue
                values = np.round(stored * np.broadcast_to(s_stored, stored.shape) /
                                  np.broadcast_to(expected, stored.shape)).astype(int_types[bias.type])
                op.inputs[2] = _requantized_bias(m, sg, bias, values, expected, fixed)
                fixed += 1
    if not fixed:
        return data, 0
    return write_model(m), fixed
