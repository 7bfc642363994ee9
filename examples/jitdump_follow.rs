//! Follows a jitdump while its process writes it, the way samply does: with linux-perf-data's
//! `JitDumpReader`, which reads each record header once and then waits for the record's body
//! to arrive. Any filler a writer leaves past its records would be taken for a record here
//! (samply stopped at the first zero header). Used by tests/test_jit_live.py.
//!
//!     cargo run --example jitdump_follow -- DUMP PID
//!
//! Waits for DUMP to appear, follows it until process PID has exited and nothing more arrives,
//! and prints `FOLLOWED records=N code_loads=M`. Exits 3 if it met a record header that cannot
//! be a record (size below the 16-byte prefix), 2 on a parse error.

use std::collections::BTreeSet;
use std::fs::File;
use std::thread::sleep;
use std::time::Duration;

use linux_perf_data::jitdump::{JitDumpReader, JitDumpRecord};

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, pid) = match args.as_slice() {
        [_, path, pid] => (path.clone(), pid.parse::<i32>().expect("PID is a number")),
        _ => {
            eprintln!("usage: jitdump_follow DUMP PID");
            std::process::exit(64);
        }
    };
    let tick = Duration::from_millis(2);
    let file = loop {
        match File::open(&path) {
            Ok(file) if file.metadata().map(|m| m.len() >= 40).unwrap_or(false) => break file,
            _ if !alive(pid) => {
                eprintln!("jitdump_follow: process {pid} ended before {path} had a header");
                std::process::exit(2);
            }
            _ => sleep(tick),
        }
    };
    let mut reader = JitDumpReader::new(file).unwrap_or_else(|err| {
        eprintln!("jitdump_follow: bad header in {path}: {err}");
        std::process::exit(2);
    });
    let (mut records, mut loads) = (0u64, BTreeSet::new());
    let mut idle_after_exit = 0;
    loop {
        let offset = reader.next_record_offset();
        match reader.next_record_header() {
            Ok(Some(header)) if (header.total_size as usize) < 16 => {
                eprintln!(
                    "jitdump_follow: record header of size {} at offset {offset} of {path}",
                    header.total_size
                );
                std::process::exit(3);
            }
            Ok(_) => {}
            Err(err) => {
                eprintln!("jitdump_follow: reading {path}: {err}");
                std::process::exit(2);
            }
        }
        match reader.next_record() {
            Ok(Some(raw)) => {
                records += 1;
                idle_after_exit = 0;
                match raw.parse() {
                    Ok(JitDumpRecord::CodeLoad(load)) => {
                        loads.insert(load.code_index);
                    }
                    Ok(_) => {}
                    Err(err) => {
                        eprintln!("jitdump_follow: record at offset {offset} of {path}: {err}");
                        std::process::exit(2);
                    }
                }
            }
            Ok(None) => {
                if !alive(pid) {
                    idle_after_exit += 1;
                    if idle_after_exit > 50 {
                        break;
                    }
                }
                sleep(tick);
            }
            Err(err) => {
                eprintln!("jitdump_follow: reading {path}: {err}");
                std::process::exit(2);
            }
        }
    }
    println!("FOLLOWED records={records} code_loads={}", loads.len());
}
