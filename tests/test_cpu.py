"""Default thread count (cpu.py): physical cores from each platform's source, llama.cpp's fallback elsewhere."""

from types import SimpleNamespace

from llamacpy import cpu


def _sysfs(root, siblings):
    for i, s in enumerate(siblings):
        d = root / f"cpu{i}" / "topology"
        d.mkdir(parents=True)
        (d / "thread_siblings").write_text(s + "\n")
    return root


def test_linux_sysfs_counts_sibling_sets(tmp_path):
    # 4 cores x 2 threads (x86 SMT), and an aarch64 layout with no SMT and no "core id" in /proc/cpuinfo
    assert cpu.linux_cores(_sysfs(tmp_path / "a", ["11", "22", "44", "88", "11", "22", "44", "88"])) == 4
    assert cpu.linux_cores(_sysfs(tmp_path / "b", ["1", "2", "4", "8", "10", "20"])) == 6
    assert cpu.linux_cores(tmp_path / "none") == 0


def test_cpuinfo_pairs(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("".join(f"processor\t: {i}\nphysical id\t: {i // 4}\ncore id\t\t: {i % 2}\n\n" for i in range(8)))
    assert cpu.cpuinfo_cores(f) == 4  # 2 packages x 2 cores, 2 threads each
    f.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n\nprocessor\t: 1\n")  # aarch64: no topology here
    assert cpu.cpuinfo_cores(f) == 0


def test_macos_sysctl_prefers_performance_cores():
    answers = {"hw.perflevel0.physicalcpu": "8\n", "hw.physicalcpu": "12\n"}

    def run(cmd, **kw):
        return SimpleNamespace(returncode=0, stdout=answers[cmd[-1]])

    assert cpu.macos_cores(run) == 8
    answers["hw.perflevel0.physicalcpu"] = ""  # Intel Macs have no perflevels
    assert cpu.macos_cores(run) == 12


def test_fallback_and_cap(monkeypatch):
    assert [cpu._fallback(n) for n in (1, 4, 8, 16)] == [1, 4, 4, 8]
    monkeypatch.setattr(cpu, "_usable_logical", lambda: 2)
    monkeypatch.setattr(cpu, "_detect", lambda: 16)
    assert cpu.physical_cores() == 2  # never more threads than CPUs this process may use
    monkeypatch.setattr(cpu, "_detect", lambda: 0)
    assert cpu.physical_cores() == 2


def test_this_machine_has_a_sane_default():
    assert 1 <= cpu.physical_cores() <= cpu._usable_logical()
