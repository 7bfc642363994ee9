//! Flamegraph SVGs for the command line (`python -m perftramp record|report`), drawn by the
//! `inferno` crate (the Rust port of Brendan Gregg's FlameGraph) from collapsed stacks,
//! `frame;frame;frame count` lines, outermost frame first.
//!
//! Colours: Python frames (`py::...`, the names perftramp gives perf) in a blue-green range,
//! kernel frames (annotated `_[k]`, as FlameGraph's `stackcollapse-perf --kernel` does) orange,
//! everything else (native code) in the classic red-yellow range. The Python view names its
//! frames itself and passes their kinds (`kinds`), which pick the colour instead. Colours
//! depend only on the name and kind, so two renderings of the same data look the same.
//!
//! Labels are truncated on the right (inferno's default cuts the left), because the Python
//! view's labels lead with the function: a narrow box shows `parse_ex..`, not `..ers/x.py`.

use std::collections::{HashMap, HashSet};
use std::io;

use inferno::flamegraph::color::{BasicPalette, Color, Palette, PaletteMap};
use inferno::flamegraph::{self, Direction, Options, TextTruncateDirection};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;

/// The prefix of every Python frame perftramp names (CPython's own format).
pub const PYTHON_PREFIX: &str = "py::";
/// FlameGraph's annotation of kernel frames.
pub const KERNEL_SUFFIX: &str = "_[k]";

/// FNV-1a: stable across runs and machines (unlike std's SipHash with random keys).
fn fnv1a(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A colour for `name`, or None to let inferno's default (hot) palette choose.
fn frame_color(name: &str) -> Option<Color> {
    let hash = fnv1a(name);
    let v1 = (hash & 0xff) as u8;
    let v2 = ((hash >> 8) & 0xff) as u8;
    if name.starts_with(PYTHON_PREFIX) {
        // Blue-green, light enough for black text.
        Some(Color { r: 80 + v1 / 4, g: 165 + v2 / 4, b: 190 + v1 / 5 })
    } else if name.ends_with(KERNEL_SUFFIX) {
        Some(Color { r: 235 + v1 / 16, g: 140 + v2 / 5, b: 40 + v1 / 8 })
    } else {
        None
    }
}

/// A colour for a frame of a known kind (the Python view's `kinds`), None for an unknown kind.
fn kind_color(kind: &str, name: &str) -> Option<Color> {
    let hash = fnv1a(name);
    let v1 = (hash & 0xff) as u8;
    let v2 = ((hash >> 8) & 0xff) as u8;
    match kind {
        "python" => Some(Color { r: 80 + v1 / 4, g: 165 + v2 / 4, b: 190 + v1 / 5 }),
        "kernel" => Some(Color { r: 235 + v1 / 16, g: 140 + v2 / 5, b: 40 + v1 / 8 }),
        // C extensions, libc, mypyc/Cython code: the classic warm native range.
        "native" => Some(Color { r: 225 + v1 / 10, g: 180 + v2 / 6, b: 60 + v1 / 6 }),
        // CPython's own work at the tip of a Python call (allocation, dict lookups...): muted.
        "interpreter" => Some(Color { r: 200 + v1 / 12, g: 190 + v2 / 12, b: 170 + v1 / 12 }),
        // Off-CPU time (the wall view's `[off-CPU: reason]` leaves): blue, apart from all CPU work.
        "off-cpu" => Some(Color { r: 70 + v1 / 10, g: 110 + v2 / 8, b: 220 + v1 / 10 }),
        // Process roots and markers (stack cut short): grey, so they read as structure.
        "process" | "marker" => {
            Some(Color { r: 190 + v1 / 20, g: 190 + v1 / 20, b: 195 + v1 / 20 })
        }
        _ => None,
    }
}

/// The lines of a collapsed-stacks text, without blank lines and comments.
fn stack_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// The frames of a collapsed line (`a;b;c 12` gives a, b, c).
fn frames_of(line: &str) -> impl Iterator<Item = &str> {
    let stack = line.rsplit_once(' ').map_or(line, |(stack, _count)| stack);
    stack.split(';')
}

/// Carried in every SVG's `NOTES` comment (README: Licences).
pub const LICENCE_NOTE: &str = "drawn by perftramp with inferno; the embedded script is \
FlameGraph's (Copyright Brendan Gregg and contributors), CDDL-1.0, source: \
https://github.com/jonhoo/inferno and https://github.com/brendangregg/FlameGraph";

/// Draws an interactive (searchable, zoomable) flamegraph SVG of collapsed stacks.
///
/// `lines` are `frame;frame;... count` lines, outermost frame first. Returns an error of kind
/// `InvalidData` when they hold no sample.
///
/// `kinds` maps frame names to their kind (python, native, interpreter, kernel, process,
/// marker), which chooses their colour; names it does not hold are coloured by their name.
/// `inverted` draws an icicle graph (roots at the top: the first screen shows the widest
/// boxes instead of thin tips over empty background). `count_name` is what the counts are
/// (`samples`, `µs`), as the tooltips say it.
pub fn render(
    lines: &[&str],
    title: &str,
    subtitle: Option<&str>,
    kinds: &HashMap<String, String>,
    inverted: bool,
    count_name: &str,
) -> io::Result<String> {
    let mut palette_map = PaletteMap::default();
    let mut seen: HashSet<&str> = HashSet::new();
    for line in lines.iter().flat_map(|text| stack_lines(text)) {
        for frame in frames_of(line) {
            if seen.insert(frame) {
                let color = match kinds.get(frame) {
                    Some(kind) => kind_color(kind, frame),
                    None => frame_color(frame),
                };
                if let Some(color) = color {
                    palette_map.insert(frame, color);
                }
            }
        }
    }
    let mut options = Options::default();
    options.title = title.to_owned();
    options.subtitle = subtitle.map(str::to_owned);
    // The SVG embeds FlameGraph's script (CDDL-1.0, via inferno): say so where it travels.
    options.notes = LICENCE_NOTE.to_owned();
    options.colors = Palette::Basic(BasicPalette::Hot);
    options.deterministic = true;
    options.count_name = count_name.to_owned();
    options.name_type = "Function:".to_owned();
    options.palette_map = Some(&mut palette_map);
    options.text_truncate_direction = TextTruncateDirection::Right;
    if inverted {
        options.direction = Direction::Inverted;
    }
    let mut svg = Vec::new();
    flamegraph::from_lines(
        &mut options,
        lines.iter().flat_map(|text| stack_lines(text)),
        &mut svg,
    )?;
    String::from_utf8(svg).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// `render_flamegraph(collapsed_lines, title, subtitle=None, kinds=None, inverted=False,
/// count_name="samples") -> str`: the SVG of collapsed stacks, given as one text or a list of
/// lines; `kinds` maps frame names to their kind (colour); `count_name` names the counts. Raises ValueError when they hold no sample. The GIL is released
/// while drawing.
#[pyfunction]
#[pyo3(signature = (collapsed_lines, title, subtitle=None, kinds=None, inverted=false, count_name="samples"))]
pub fn render_flamegraph(
    py: Python<'_>,
    collapsed_lines: &Bound<'_, PyAny>,
    title: String,
    subtitle: Option<String>,
    kinds: Option<HashMap<String, String>>,
    inverted: bool,
    count_name: &str,
) -> PyResult<String> {
    let kinds = kinds.unwrap_or_default();
    let texts: Vec<String> = if let Ok(text) = collapsed_lines.cast::<PyString>() {
        vec![text.to_str()?.to_owned()]
    } else {
        collapsed_lines
            .extract()
            .map_err(|_| PyTypeError::new_err("collapsed_lines must be a str or a list of str"))?
    };
    py.detach(|| {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        render(&refs, &title, subtitle.as_deref(), &kinds, inverted, count_name)
    })
    .map_err(|err| match err.kind() {
        io::ErrorKind::InvalidData => PyValueError::new_err(format!("no flamegraph drawn: {err}")),
        _ => pyo3::exceptions::PyOSError::new_err(err.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_python_native_and_kernel_frames_with_their_colours() {
        let lines = [
            "python3;main;py::main:/t.py;_PyEval_EvalFrameDefault;py::fib:/t.py 30",
            "python3;main;py::main:/t.py;write;ksys_write_[k] 10\n# comment\n\n",
        ];
        let none = HashMap::new();
        let svg = render(&lines, "perftramp test", Some("sub"), &none, false, "samples").unwrap();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("py::fib:/t.py"));
        assert!(svg.contains("perftramp test"));
        // inferno shows kernel frames without their annotation, in orange.
        assert!(svg.contains("ksys_write"));
        let kernel = frame_color("ksys_write_[k]").unwrap();
        assert!(svg.contains(&format!("rgb({},{},{})", kernel.r, kernel.g, kernel.b)));
        let fib = frame_color("py::fib:/t.py").unwrap();
        assert!(svg.contains(&format!("rgb({},{},{})", fib.r, fib.g, fib.b)));
        // The embedded script's licence travels with it.
        assert!(
            svg.contains("<!--NOTES: drawn by perftramp with inferno") && svg.contains("CDDL-1.0")
        );
        // Deterministic: same input, same bytes.
        assert_eq!(
            svg,
            render(&lines, "perftramp test", Some("sub"), &none, false, "samples").unwrap()
        );
    }

    #[test]
    fn no_sample_is_an_error() {
        let err =
            render(&["", "# nothing"], "t", None, &HashMap::new(), false, "samples").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn colours_stay_in_their_ranges() {
        for name in ["py::a:/x.py", "py::<module>:/y.py", "py::C.m:/z.py"] {
            let c = frame_color(name).unwrap();
            assert!(c.b >= 190 && c.g >= 165, "{name}: {c:?}");
        }
        assert!(frame_color("do_syscall_64_[k]").unwrap().r >= 235);
        assert!(frame_color("PyObject_Call").is_none());
    }

    #[test]
    fn kinds_choose_the_colour_of_the_python_views_labels() {
        let lines = ["python3 [pid 7];main (t.py:1);fib (t.py:4);encoder_call 5"];
        let kinds: HashMap<String, String> = [
            ("python3 [pid 7]", "process"),
            ("main (t.py:1)", "python"),
            ("fib (t.py:4)", "python"),
            ("encoder_call", "native"),
        ]
        .iter()
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect();
        let svg = render(&lines, "t", None, &kinds, true, "samples").unwrap();
        for (name, kind) in &kinds {
            let c = kind_color(kind, name).unwrap();
            assert!(svg.contains(&format!("rgb({},{},{})", c.r, c.g, c.b)), "{name}");
        }
        let fib = kind_color("python", "fib (t.py:4)").unwrap();
        assert!(fib.b >= 190 && fib.g >= 165);
        assert!(kind_color("bogus", "x").is_none());
    }
}
