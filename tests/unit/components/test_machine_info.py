"""What a training run records about the machine whose float rounding it inherits."""

from __future__ import annotations

from edgeloop.components.tracking import cpu_info

AVX2_ONLY = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2673 v4 @ 2.30GHz
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c popcnt
processor\t: 1
model name\t: Intel(R) Xeon(R) CPU E5-2673 v4 @ 2.30GHz
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c popcnt
"""


def test_cpu_info_reads_model_flags_and_the_simd_subset(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(AVX2_ONLY)
    info = cpu_info(path)
    assert info["cpu_model"] == "Intel(R) Xeon(R) CPU E5-2673 v4 @ 2.30GHz"
    assert info["cpu_isa"] == "sse4_2,avx,avx2,fma,f16c"  # no avx512*: another rounding than AVX-512
    assert info["cpu_flags"].split() == sorted(info["cpu_flags"].split()) and "popcnt" in info["cpu_flags"]


def test_cpu_info_without_proc_cpuinfo(tmp_path):
    info = cpu_info(tmp_path / "missing")
    assert info["cpu_flags"] == "unknown" and info["cpu_isa"] == "unknown" and info["cpu_model"]
