"""The per-frame budget tool's perf parsing (the measurement itself needs perf and a quiet machine)."""

from __future__ import annotations

import pytest

from stexport.benchmarks.budget import kernel_group_shares

REPORT = """\
# Samples: 4K of event 'cpu-clock'
#
    24.89%  [.] xnn_f32_gemm_minmax_ukernel_7x32__avx512f_broadcast                    -      -
    18.99%  [.] xnn_f32_gemm_minmax_ukernel_1x32__avx512f_broadcast                    -      -
    12.71%  [.] __memmove_avx512_unaligned_erms                                        -      -
     6.93%  [.] xnn_f32_dwconv_minmax_ukernel_25p16c__avx512f                          -      -
     3.77%  [.] xnn_f32_vhswish_ukernel__avx512f_u32                                   -      -
     0.36%  [k] finish_task_switch.isra.0                                              -      -
"""


def test_perf_report_is_grouped_by_kernel_family() -> None:
    shares = kernel_group_shares(REPORT)
    assert shares["1x1 convs (GEMM)"] == pytest.approx(0.2489)
    assert shares["fully connected (M=1 GEMM: SE and classifier)"] == pytest.approx(0.1899)
    assert shares["copies (concatenations, slices, state I/O)"] == pytest.approx(0.1271)
    assert shares["depthwise convs (spatial and temporal)"] == pytest.approx(0.0693)
    assert shares["hard-swish"] == pytest.approx(0.0377)
    assert shares["other (Python, numpy, kernel)"] == pytest.approx(0.0036)
    assert list(shares)[0] == "1x1 convs (GEMM)"  # largest first
