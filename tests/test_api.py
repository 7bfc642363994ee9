"""The Python API: modes, idempotence, status, errors, conflicts and chaining."""

from __future__ import annotations

import os
import sys

import pytest

import perftramp
from perftramp import _perftramp

from conftest import native_stub


@pytest.fixture(autouse=True)
def _off_after():
    yield
    perftramp.disable()


def test_unknown_mode_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        perftramp.enable("flamegraph")
    assert "'flamegraph'" in str(err.value)
    assert "'map'" in str(err.value) and "'perf'" in str(err.value)
    assert not perftramp.is_enabled()


def test_mode_must_be_a_string():
    with pytest.raises(TypeError):
        perftramp.enable(1)  # type: ignore[arg-type]


def test_native_layer_validates_modes_too():
    with pytest.raises(ValueError, match="valid modes"):
        _perftramp.enable("nope")


def test_enable_disable_and_status():
    assert not perftramp.is_enabled()
    perftramp.enable()
    st = perftramp.status()
    assert st.enabled and perftramp.is_enabled()
    assert st.mode == "map"
    assert st.pid == os.getpid()
    assert st.perf_map_path == f"/tmp/perf-{os.getpid()}.map"
    assert st.errors == ()
    perftramp.disable()
    assert not perftramp.is_enabled()
    assert not perftramp.status().enabled
    perftramp.disable()  # disabling when off is a no-op
    assert not perftramp.is_enabled()


def test_perf_is_an_alias_of_map():
    perftramp.enable("perf")
    assert perftramp.status().mode == "map"


def test_enable_twice_is_a_noop():
    perftramp.enable("map")
    before = perftramp.status()
    perftramp.enable("map")
    after = perftramp.status()
    assert after.executable_bytes == before.executable_bytes
    assert after.perf_map_path == before.perf_map_path


def test_many_enable_disable_cycles_leak_nothing(run_python):
    # CPython has 255 co_extra indexes: requesting one per enable would fail long before 1000.
    run_python(
        """
        import perftramp
        def work(i):
            return i * 2
        perftramp.enable()
        work(1)
        fds = len(os.listdir('/proc/self/fd'))
        mem = perftramp.status().executable_bytes
        for i in range(1000):
            perftramp.enable()
            assert work(i) == 2 * i
            perftramp.disable()
        perftramp.enable()
        st = perftramp.status()
        assert len(os.listdir('/proc/self/fd')) == fds, 'file descriptors leaked'
        assert st.executable_bytes == mem, (st.executable_bytes, mem)
        assert st.trampolines < 50, st.trampolines  # reused, not remade
        print('ok')
        """
    ).check()


def test_executable_memory_is_one_slot_per_trampoline_in_map_mode():
    perftramp.enable()
    st = perftramp.status()
    assert st.trampolines > 0
    # 16 bytes on x86_64, 32 on aarch64.
    assert st.executable_bytes_used == native_stub().map_slot * st.trampolines
    assert st.executable_bytes % 65536 == 0


def test_context_manager_restores_previous_state():
    with perftramp.enabled() as st:
        assert perftramp.is_enabled()
        assert st.enabled
    assert not perftramp.is_enabled()
    perftramp.enable()
    with perftramp.enabled():
        pass
    assert perftramp.is_enabled()


def test_exceptions_form_a_hierarchy():
    assert issubclass(perftramp.UnsupportedError, perftramp.PerftrampError)
    assert issubclass(perftramp.ConflictError, perftramp.PerftrampError)
    assert issubclass(perftramp.PerftrampError, RuntimeError)
    assert set(perftramp.__all__) <= set(dir(perftramp))


def test_unwritable_map_path_raises_oserror_and_leaves_nothing_enabled(run_python):
    run_python(
        """
        import perftramp
        path = f'/tmp/perf-{os.getpid()}.map'
        target = path + '.target'
        for stale in (path, target):  # left by an earlier process with this pid (pids are reused)
            if os.path.lexists(stale):
                os.unlink(stale)
        os.symlink(target, path)
        try:
            try:
                perftramp.enable()
            except OSError as err:
                import errno
                assert path in str(err), err
                assert err.errno == errno.ELOOP and err.filename == path, (err.errno, err.filename)
                print('raised', err)
            else:
                raise AssertionError('enable wrote through a symlink')
            assert not perftramp.is_enabled()
            assert not os.path.exists(target)
            assert perftramp.status().mode is None
        finally:
            os.unlink(path)
        perftramp.enable()  # works once the path is free
        assert perftramp.is_enabled()
        print('ok')
        """
    ).check()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="CPython's perf trampoline exists from 3.12")
def test_refuses_when_cpythons_trampoline_is_active(run_python):
    if not hasattr(sys, "activate_stack_trampoline"):
        pytest.skip("this CPython was built without perf trampoline support")
    run = run_python(
        """
        import perftramp
        assert sys.is_stack_trampoline_active()
        try:
            perftramp.enable()
        except perftramp.ConflictError as err:
            assert '-X perf' in str(err), err
            print('refused')
        assert not perftramp.is_enabled()
        sys.deactivate_stack_trampoline()
        perftramp.enable()
        assert perftramp.is_enabled()
        print('ok')
        """,
        python_args=["-X", "perf"],
    ).check()
    assert "refused" in run.stdout


@pytest.mark.skipif(sys.version_info < (3, 11), reason="_testinternalcapi's recording hook exists from 3.11")
def test_chains_to_a_previously_installed_hook_and_restores_it(run_python):
    pytest.importorskip("_testinternalcapi")
    run_python(
        """
        import _testinternalcapi, perftramp
        seen = []
        def before(): pass
        def during(): pass
        def after(): pass
        _testinternalcapi.set_eval_frame_record(seen)
        before()
        perftramp.enable()
        assert perftramp.status().chained_to_other_hook
        during()
        perftramp.disable()
        after()
        _testinternalcapi.set_eval_frame_default()
        # The recording hook saw every call: it ran under perftramp and was put back after.
        for name in ('before', 'during', 'after'):
            assert name in seen, (name, seen)
        text = open(f'/tmp/perf-{os.getpid()}.map').read()
        assert 'py::during:' in text and 'py::after:' not in text
        print('ok')
        """
    ).check()


@pytest.mark.once
def test_stub_code_is_the_exact_x86_64_stub():
    assert _perftramp.stub_code("x86_64") == bytes.fromhex("f30f1efa554889e5ffd15dc3cccccccc")
    with pytest.raises(ValueError, match="x86_64"):
        _perftramp.stub_code("sparc")


def test_native_arch_matches_the_machine():
    import platform

    expected = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine())
    assert _perftramp.native_arch() == expected


def test_version_fast_paths_are_verified_and_on():
    """The hot path's direct co_extra read (3.9-3.15) and the C-recursion refund (3.12/3.13)
    are checked against CPython at enable; on the interpreters tested here both must be on.
    Without the direct read the hook cannot tail-call and costs C stack on every call."""
    perftramp.enable()
    diag = _perftramp.diagnostics()
    assert diag["direct_code_extra"] is True
    assert diag["direct_code_names"] is True
    assert diag["c_recursion_refund"] is ((3, 12) <= sys.version_info < (3, 14))


@pytest.mark.skipif(sys.version_info < (3, 15), reason="the opt-in exists from CPython 3.15")
def test_no_specialization_opt_in_under_the_hook():
    """3.15's opt-in to specialize under a custom eval hook (gh-146031) is left off while
    perftramp's hook is installed (docs/how-it-works.md), and CPython's default is back after."""
    import ctypes

    api = ctypes.pythonapi
    api.PyInterpreterState_Get.restype = ctypes.c_void_p
    api._PyInterpreterState_IsSpecializationEnabled.argtypes = [ctypes.c_void_p]
    interp = api.PyInterpreterState_Get()
    perftramp.disable()
    assert api._PyInterpreterState_IsSpecializationEnabled(interp) == 1
    with perftramp.enabled():
        assert api._PyInterpreterState_IsSpecializationEnabled(interp) == 0
    assert api._PyInterpreterState_IsSpecializationEnabled(interp) == 1
