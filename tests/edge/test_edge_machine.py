"""fpn_edge.machine: the one probe of CPU, cores, load and memory (TF-free)."""
import sys

import pytest

from fpn_edge import machine as m


def test_int8_flags_and_dot_product_from_a_flag_list():
    x86 = "fpu sse2 avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni".split()
    assert m.int8_flags(x86) == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]
    assert m.has_int8_dot_product(x86)
    assert not m.has_int8_dot_product("fpu avx2 fma".split())
    arm = "fp asimd evtstrm aes crc32 asimddp".split()
    assert m.int8_flags(arm) == ["asimd", "asimddp"] and m.has_int8_dot_product(arm)
    # a report may list other flags, in its own order
    assert m.int8_flags(x86, ("f16c", "avx2", "sve")) == ["f16c", "avx2"]


def test_cpu_name_prefers_lscpu_then_cpuinfo():
    assert m.cpu_name({"Model name": "Cortex-A76"}) == "Cortex-A76"
    name = m.cpu_name()
    assert isinstance(name, str) and name
    assert m.cpu_name({}) == name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc facts")
def test_linux_facts():
    flags = m.cpu_flags()
    assert flags and m.int8_flags() == m.int8_flags(flags)
    assert m.usable_cpus() >= 1
    load = m.loadavg()
    assert len(load) == 3 and all(v >= 0 for v in load)
    assert m.memory_total_gib() > 0
    rss, peak = m.rss_mb(), m.peak_rss_mb()
    assert 1 < rss <= peak
    assert set(m.vm_status("VmRSS", "VmHWM")) == {"VmRSS", "VmHWM"}


def test_no_tensorflow_import():
    import subprocess

    code = ("import sys, fpn_edge.machine, fpn_edge.atomic, fpn_edge.bench; "
            "sys.exit(int(any(k in sys.modules for k in ('tensorflow', 'keras'))))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
