//! Aggregation of identical stacks: strings interned once, each distinct (pid, comm, frames)
//! counted, so memory grows with the number of distinct stacks, not of samples.

use std::collections::HashMap;
use std::sync::Arc;

/// Strings by id and ids by string.
#[derive(Default)]
pub struct Interner {
    ids: HashMap<Arc<str>, u32>,
    strings: Vec<Arc<str>>,
}

impl Interner {
    pub fn intern(&mut self, text: &Arc<str>) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        self.strings.push(text.clone());
        self.ids.insert(text.clone(), id);
        id
    }

    pub fn intern_str(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        self.intern(&Arc::from(text))
    }

    pub fn get(&self, id: u32) -> &str {
        self.strings.get(id as usize).map(|s| &**s).unwrap_or("[unknown]")
    }
}

/// A frame as interned (symbol id, dso id).
pub type FrameIds = (u32, u32);

#[derive(Hash, PartialEq, Eq)]
struct StackKey {
    pid: i32,
    comm: u32,
    /// Innermost first, as collected.
    frames: Box<[FrameIds]>,
}

/// Counts of distinct stacks.
#[derive(Default)]
pub struct StackCounts {
    pub names: Interner,
    counts: HashMap<StackKey, u64>,
}

impl StackCounts {
    /// Counts one sample's stack (`frames` innermost first).
    pub fn add(&mut self, pid: i32, comm: u32, frames: &[FrameIds], count: u64) {
        let key = StackKey { pid, comm, frames: frames.into() };
        *self.counts.entry(key).or_insert(0) += count;
    }

    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// (pid, comm id, frames innermost first, count) of every distinct stack.
    pub fn iter(&self) -> impl Iterator<Item = (i32, u32, &[FrameIds], u64)> {
        self.counts.iter().map(|(k, &c)| (k.pid, k.comm, &*k.frames, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_stacks_are_counted_once() {
        let mut counts = StackCounts::default();
        let comm = counts.names.intern_str("python");
        let a = counts.names.intern_str("a");
        let dso = counts.names.intern_str("/lib/x.so");
        assert_eq!(counts.names.intern_str("a"), a);
        counts.add(1, comm, &[(a, dso)], 1);
        counts.add(1, comm, &[(a, dso)], 2);
        counts.add(2, comm, &[(a, dso)], 1);
        assert_eq!(counts.distinct(), 2);
        let total: u64 = counts.iter().map(|(_, _, _, c)| c).sum();
        assert_eq!(total, 4);
        assert_eq!(counts.names.get(dso), "/lib/x.so");
    }
}
