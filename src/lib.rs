//! perftramp's Python module (`perftramp._perftramp`): a thin PyO3 surface over the Rust core.
pub mod arch;

use pyo3::prelude::*;

#[pymodule]
fn _perftramp(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
