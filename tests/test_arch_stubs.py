"""Every architecture's trampoline stub, held to one standard on any host.

For each arch in perftramp's table, the exact bytes `stub_code(arch)` returns are
1. disassembled with binutils and checked instruction by instruction (padding must trap), and
2. run by tests/arch/slot_harness.c, which maps an arena the way src/runtime/arena.rs does and calls a
   target through non-first slots, checking arguments, return value, the frame-record chain,
   that padding raises SIGTRAP, and that the arena is r-xp (never rwx) in /proc/self/maps.
A foreign arch is cross-compiled statically and run under qemu-user. Tests skip only when a tool
is missing; on Debian: gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user-static
libc6-dev-arm64-cross (and gcc-x86-64-linux-gnu etc. on an aarch64 host).
"""

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from perftramp import _perftramp

pytestmark = pytest.mark.once

HARNESS = Path(__file__).parent / "arch" / "slot_harness.c"
HOST = platform.machine()

# What binutils must print for each stub, in order, then only `trap` up to `stride`.
ARCHES = {
    "x86_64": dict(
        triple="x86_64-linux-gnu",
        bfd="i386:x86-64",
        package="binutils / gcc / libc6-dev (native), qemu-user-static (foreign)",
        stride=16,
        code=[
            (0, "endbr64"),
            (4, "push %rbp"),
            (5, "mov %rsp,%rbp"),
            (8, "call *%rcx"),
            (10, "pop %rbp"),
            (11, "ret"),
        ],
        call="call *%rcx",
        trap="int3",
    ),
    "aarch64": dict(
        triple="aarch64-linux-gnu",
        bfd="aarch64",
        package="gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross "
        "qemu-user-static",
        stride=32,
        code=[
            (0, "stp x29, x30, [sp, #-16]!"),
            (4, "mov x29, sp"),
            (8, "blr x3"),
            (12, "ldp x29, x30, [sp], #16"),
            (16, "ret"),
        ],
        call="blr x3",
        trap="brk #0x0",
    ),
}

CFLAGS = ["-static", "-O1", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls", "-Wall"]


def tool(arch, kind):
    """Path of `kind` ("objdump", "gcc", "qemu") for `arch`, or skip saying what to install."""
    spec = ARCHES[arch]
    native = HOST == arch
    if kind == "qemu":
        if native:
            return None
        names = [f"qemu-{arch}-static", f"qemu-{arch}"]
    elif native:
        names = [f"{spec['triple']}-{kind}", kind]
    else:
        names = [f"{spec['triple']}-{kind}"]
        if kind == "objdump":
            names.append("objdump")  # a multi-arch objdump may know the bfd
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"{' / '.join(names)} not found (install {spec['package']})")


def disassemble(arch, code, tmp_path):
    """[(offset, normalized instruction text)] for `code` as binutils decodes it."""
    blob = tmp_path / f"{arch}.bin"
    blob.write_bytes(code)
    out = subprocess.run(
        [tool(arch, "objdump"), "-D", "-b", "binary", "-m", ARCHES[arch]["bfd"], str(blob)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 and "can't use supplied machine" in out.stderr:
        pytest.skip(f"objdump cannot disassemble {arch}: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    insns = []
    for line in out.stdout.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\t[^\t]*\t(.*)$", line)
        if not m:
            continue  # headers, and continuation lines holding only bytes
        text = " ".join(m.group(2).split("//")[0].split())
        text = re.sub(r"^(call|ret|push|pop)q\b", r"\1", text)  # binutils < 2.31 spelling
        insns.append((int(m.group(1), 16), text))
    return insns


def layout(arch, tmp_path):
    """(slot bytes, offset just after the call, trap offsets), after checking the disassembly."""
    spec = ARCHES[arch]
    slot = _perftramp.stub_code(arch)
    assert isinstance(slot, bytes)
    assert len(slot) == spec["stride"], f"{arch}: slot is {len(slot)} bytes"
    insns = disassemble(arch, slot, tmp_path)
    n = len(spec["code"])
    assert insns[:n] == spec["code"], f"{arch} stub disassembles as:\n" + "\n".join(
        f"{off:3d}: {text}" for off, text in insns
    )
    padding = insns[n:]
    assert padding, f"{arch}: no padding after the stub"
    assert all(text == spec["trap"] for _, text in padding), f"{arch} padding: {padding}"
    code_end = padding[0][0]
    assert code_end <= spec["stride"]  # the stub fits one slot: slots never split it
    call_index = [text for _, text in spec["code"]].index(spec["call"])
    ret_offset = insns[call_index + 1][0]
    return slot, ret_offset, [off for off, _ in padding]


@pytest.fixture(scope="module")
def harness_binaries(tmp_path_factory):
    built = {}

    def build(arch):
        if arch not in built:
            cc = tool(arch, "gcc")
            exe = tmp_path_factory.mktemp(f"harness-{arch}") / "slot_harness"
            out = subprocess.run(
                [cc, *CFLAGS, "-o", str(exe), str(HARNESS)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0 and "cannot find -lc" in out.stderr:
                pytest.skip(f"no static libc for {arch}: {out.stderr.strip()}")
            assert out.returncode == 0, f"{cc} failed:\n{out.stderr}"
            built[arch] = exe
        return built[arch]

    return build


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_stub_disassembles_as_documented(arch, tmp_path):
    layout(arch, tmp_path)


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_slot_runs_from_an_arena(arch, tmp_path, harness_binaries):
    slot, ret_offset, traps = layout(arch, tmp_path)
    qemu = tool(arch, "qemu")
    exe = harness_binaries(arch)
    cmd = [*([qemu] if qemu else []), str(exe), slot.hex(), str(ret_offset)]
    cmd.append(",".join(map(str, traps)))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    report = f"$ {' '.join(cmd)}\n{out.stdout}{out.stderr}"
    assert out.returncode == 0, report
    assert "FAIL" not in out.stdout, report
    assert out.stdout.rstrip().endswith("PASS"), report
    # Every check ran: 3 map checks, 3 calls x 7 checks, one per padding trap, 2 closing.
    passed = sum(line.startswith("ok ") for line in out.stdout.splitlines())
    assert passed >= 3 + 3 * 7 + len(traps) + 2, report
