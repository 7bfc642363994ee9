fn main() {
    // Emits Py_3_9 .. Py_3_X and Py_GIL_DISABLED cfgs for the interpreter being built for:
    // src/cpython.rs selects the frame layout from them, in one place.
    pyo3_build_config::use_pyo3_cfgs();
    println!("cargo:rerun-if-changed=build.rs");
}
