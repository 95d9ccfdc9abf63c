"""Independent oracle for lava-cache's KV dtypes: llama.cpp's gguf-py quantizes
and dequantizes Q8_0 with numpy, and numpy rounds to float16.

usage: kv_dtype_oracle.py IN.f32 D OUT_Q8_0.f32 OUT_F16.f32
IN holds little-endian f32 rows of D values; the outputs hold what each format
reads back for them.
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants

src, d, out_q8, out_f16 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
x = np.fromfile(src, dtype="<f4").reshape(-1, d)
q = quants.quantize(x, GGMLQuantizationType.Q8_0)
quants.dequantize(q, GGMLQuantizationType.Q8_0).astype("<f4").tofile(out_q8)
x.astype(np.float16).astype("<f4").tofile(out_f16)
