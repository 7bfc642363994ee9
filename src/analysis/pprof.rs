//! The bytes of a pprof profile (google/pprof's `proto/profile.proto`), for
//! `python -m perftramp report --format pprof`.
//!
//! Python builds the tables (strings, functions, locations, samples: `_export_pprof.py`); this
//! module only encodes them. The protobuf wire format is written by `prost` (derived from the
//! message definitions below, so no protoc and no generated code at build time): a well-kept
//! crate that adds no runtime dependency to the Python package, unlike the `protobuf` PyPI
//! package would. Python gzips the result (pprof files are gzipped).

use prost::Message;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// profile.proto's `Profile` (field numbers as published; unused fields omitted).
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// A sample as Python passes it: location ids (innermost first), values, labels
/// `(key, str, num)` (string-table indices, except `num`).
type SampleArgs = (Vec<u64>, Vec<i64>, Vec<(i64, i64, i64)>);

/// `encode_pprof(...) -> bytes`: the (uncompressed) Profile message. Indices are into
/// `string_table`, whose first entry must be "" (profile.proto's rule); ids start at 1.
/// `functions` are `(id, name, system_name, filename, start_line)`, `locations`
/// `(id, mapping_id, function_id, line)`, `mappings` `(id, filename)`. Each sample has one value
/// per sample type; `default_sample_type` (a string index, 0 for none: the first) is the one
/// pprof tools show first.
#[pyfunction]
#[pyo3(signature = (string_table, sample_types, period_type, period, duration_nanos, time_nanos,
                    mappings, functions, locations, samples, comments, default_sample_type=0))]
#[allow(clippy::too_many_arguments)]
pub fn encode_pprof<'py>(
    py: Python<'py>,
    string_table: Vec<String>,
    sample_types: Vec<(i64, i64)>,
    period_type: (i64, i64),
    period: i64,
    duration_nanos: i64,
    time_nanos: i64,
    mappings: Vec<(u64, i64)>,
    functions: Vec<(u64, i64, i64, i64, i64)>,
    locations: Vec<(u64, u64, u64, i64)>,
    samples: Vec<SampleArgs>,
    comments: Vec<i64>,
    default_sample_type: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    if string_table.first().map(String::as_str) != Some("") {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "string_table[0] must be the empty string (profile.proto)",
        ));
    }
    if let Some((_, values, _)) = samples.iter().find(|(_, v, _)| v.len() != sample_types.len()) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "a sample has {} values for {} sample types",
            values.len(),
            sample_types.len()
        )));
    }
    let profile = Profile {
        sample_type: sample_types
            .into_iter()
            .map(|(t, u)| ValueType { r#type: t, unit: u })
            .collect(),
        sample: samples
            .into_iter()
            .map(|(location_id, value, labels)| Sample {
                location_id,
                value,
                label: labels.into_iter().map(|(key, str, num)| Label { key, str, num }).collect(),
            })
            .collect(),
        mapping: mappings
            .into_iter()
            .map(|(id, filename)| Mapping {
                id,
                filename,
                has_functions: true,
                has_filenames: true,
                has_line_numbers: true,
            })
            .collect(),
        location: locations
            .into_iter()
            .map(|(id, mapping_id, function_id, line)| Location {
                id,
                mapping_id,
                line: vec![Line { function_id, line }],
            })
            .collect(),
        function: functions
            .into_iter()
            .map(|(id, name, system_name, filename, start_line)| Function {
                id,
                name,
                system_name,
                filename,
                start_line,
            })
            .collect(),
        string_table,
        time_nanos,
        duration_nanos,
        period_type: Some(ValueType { r#type: period_type.0, unit: period_type.1 }),
        period,
        comment: comments,
        default_sample_type,
    };
    let bytes = py.detach(|| profile.encode_to_vec());
    Ok(PyBytes::new(py, &bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_field_numbers_of_profile_proto() {
        let profile = Profile {
            string_table: vec![String::new(), "samples".into()],
            sample_type: vec![ValueType { r#type: 1, unit: 1 }],
            period: 7,
            ..Default::default()
        };
        let bytes = profile.encode_to_vec();
        // sample_type (field 1, length-delimited): 0x0a; string_table (field 6): 0x32;
        // period (field 12, varint): 0x60.
        assert_eq!(bytes[0], 0x0a);
        assert!(bytes.windows(2).any(|w| w == [0x60, 7]));
        assert!(bytes.windows(9).any(|w| w == [0x32, 7, b's', b'a', b'm', b'p', b'l', b'e', b's']));
        assert_eq!(Profile::decode(bytes.as_slice()).unwrap(), profile);
    }
}
