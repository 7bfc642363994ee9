//! Aggregation of identical stacks: strings interned once, each distinct (pid, comm, event,
//! frames) counted and weighed, so memory grows with the number of distinct stacks, not of
//! samples.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// The Fx hash (rustc's): the keys here are our own strings, addresses and ids, not
/// attacker-chosen, and SipHash was a visible share of the reading time.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        for &byte in chunks.remainder() {
            self.write_u64(u64::from(byte));
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }
    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;

/// Strings by id and ids by string.
#[derive(Default)]
pub struct Interner {
    ids: HashMap<Arc<str>, u32, FxBuild>,
    /// Ids by the address of a shared string (symbol tables hand out the same Arc for every
    /// hit): one pointer hash instead of hashing the text. The Arc is kept in `kept`, so
    /// the address cannot be reused while it is here.
    by_address: HashMap<usize, u32, FxBuild>,
    /// Every Arc looked up by address, kept alive for that reason.
    kept: Vec<Arc<str>>,
    /// The string of each id.
    names: Vec<Arc<str>>,
}

impl Interner {
    pub fn intern(&mut self, text: &Arc<str>) -> u32 {
        let address = Arc::as_ptr(text) as *const u8 as usize;
        if let Some(&id) = self.by_address.get(&address) {
            return id;
        }
        let id = match self.ids.get(text) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
                self.names.push(text.clone());
                self.ids.insert(text.clone(), id);
                id
            }
        };
        self.kept.push(text.clone()); // keeps `address` alive
        self.by_address.insert(address, id);
        id
    }

    pub fn intern_str(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        self.intern(&Arc::from(text))
    }

    pub fn get(&self, id: u32) -> &str {
        self.names.get(id as usize).map(|s| &**s).unwrap_or("[unknown]")
    }
}

/// A frame as interned (symbol id, dso id).
pub type FrameIds = (u32, u32);

#[derive(Hash, PartialEq, Eq)]
struct StackKey {
    pid: i32,
    comm: u32,
    /// What was measured (interned): the event's name, or `off-cpu:<state>`.
    event: u32,
    /// Innermost first, as collected.
    frames: Box<[FrameIds]>,
}

/// Counts of distinct stacks, each with an id (0, 1, 2... in order of first sight).
#[derive(Default)]
pub struct StackCounts {
    pub names: Interner,
    ids: HashMap<StackKey, u32, FxBuild>,
    /// (how many samples or intervals, their summed weight) of each stack, by id.
    totals: Vec<(u64, u64)>,
}

impl StackCounts {
    /// Counts one sample's (or off-CPU interval's) stack, `frames` innermost first, with its
    /// weight (the sample's period, or nanoseconds off CPU).
    /// Returns the stack's id.
    pub fn add(
        &mut self,
        pid: i32,
        comm: u32,
        event: u32,
        frames: &[FrameIds],
        weight: u64,
    ) -> u32 {
        let key = StackKey { pid, comm, event, frames: frames.into() };
        let next = u32::try_from(self.totals.len()).unwrap_or(u32::MAX);
        let id = *self.ids.entry(key).or_insert(next);
        if id == next {
            self.totals.push((0, 0));
        }
        let entry = &mut self.totals[id as usize];
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(weight);
        id
    }

    pub fn distinct(&self) -> usize {
        self.totals.len()
    }

    /// (pid, comm id, event id, frames innermost first, count, weight) of every distinct stack,
    /// in id order.
    pub fn iter(&self) -> impl Iterator<Item = (i32, u32, u32, &[FrameIds], u64, u64)> {
        let mut keys: Vec<(&StackKey, u32)> = self.ids.iter().map(|(k, &id)| (k, id)).collect();
        keys.sort_unstable_by_key(|&(_, id)| id);
        keys.into_iter().map(move |(k, id)| {
            let (count, weight) = self.totals[id as usize];
            (k.pid, k.comm, k.event, &*k.frames, count, weight)
        })
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
        let event = counts.names.intern_str("cpu-clock");
        assert_eq!(counts.names.intern_str("a"), a);
        counts.add(1, comm, event, &[(a, dso)], 10);
        counts.add(1, comm, event, &[(a, dso)], 20);
        counts.add(2, comm, event, &[(a, dso)], 10);
        assert_eq!(counts.distinct(), 2);
        let total: u64 = counts.iter().map(|(_, _, _, _, c, _)| c).sum();
        assert_eq!(total, 3);
        let weight: u64 = counts.iter().map(|(_, _, _, _, _, w)| w).sum();
        assert_eq!(weight, 40);
        assert_eq!(counts.names.get(dso), "/lib/x.so");
    }
}
