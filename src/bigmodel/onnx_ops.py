"""ONNX translations of bigmodel's custom ops, for `torch.onnx.export(..., custom_translation_table=TABLE)`.

`bigmodel::packed_lstm` (models/rnn.py) becomes one ONNX `LSTM` node per layer with `sequence_lens`:
the ONNX op reads each text up to its length in both directions, exactly as PyTorch's packed LSTM
does, for any batch and sequence length. Weights are reordered from PyTorch's gate order (i, f, g, o)
to ONNX's (i, o, f, c) by a Gather on constant indices, which the exporter's optimizer folds: the
LSTM nodes read plain initializers (what onnxruntime's dynamic quantization looks for).
"""

from typing import Any

import torch
from onnxscript import opset18 as op

INT32 = 6  # onnx.TensorProto.INT32


def _gates(w, hidden: int):
    """PyTorch's (i, f, g, o) row blocks of w (4H, ...) in ONNX's order (i, o, f, c)."""
    order = [*range(hidden), *range(3 * hidden, 4 * hidden), *range(hidden, 3 * hidden)]
    return op.Gather(w, op.Constant(value_ints=order), axis=0)  # type: ignore[type-var]


def packed_lstm(x, lengths, weights, num_layers: int, bidirectional: bool):
    """x (B, T, E), lengths (B,) -> (outputs (B, T, dirs * H), final hidden (layers * dirs, B, H))."""
    dirs = 2 if bidirectional else 1
    hidden = weights[1].shape[1]  # weight_hh: (4H, H)
    seq_lens: Any = op.Cast(lengths, to=INT32)  # INT32 (the stubs type Cast's result as any tensor type)
    inp = op.Transpose(x, perm=[1, 0, 2])  # (T, B, E): ONNX's default layout
    finals = []
    for layer in range(num_layers):
        ws, rs, bs = [], [], []
        for d in range(dirs):
            w_ih, w_hh, b_ih, b_hh = weights[4 * (layer * dirs + d) : 4 * (layer * dirs + d + 1)]
            ws.append(op.Unsqueeze(_gates(w_ih, hidden), [0]))  # type: ignore[arg-type]
            rs.append(op.Unsqueeze(_gates(w_hh, hidden), [0]))  # type: ignore[arg-type]
            bs.append(op.Unsqueeze(op.Concat(_gates(b_ih, hidden), _gates(b_hh, hidden), axis=0), [0]))  # type: ignore[arg-type]
        w, r, b = (op.Concat(*parts, axis=0) if dirs > 1 else parts[0] for parts in (ws, rs, bs))
        y, y_h, _ = op.LSTM(
            inp, w, r, b, seq_lens, direction="bidirectional" if bidirectional else "forward", hidden_size=hidden
        )  # y (T, dirs, B, H), zeros past each length
        # (T, B, dirs * H)
        inp = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))  # type: ignore[arg-type]
        finals.append(y_h)  # (dirs, B, H)
    return op.Transpose(inp, perm=[1, 0, 2]), op.Concat(*finals, axis=0) if len(finals) > 1 else finals[0]


def translation_table() -> dict:
    import bigmodel.models.rnn  # noqa: F401  (registers torch.ops.bigmodel.packed_lstm)

    return {torch.ops.bigmodel.packed_lstm.default: packed_lstm}
