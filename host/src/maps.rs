//! Hash maps of the command path (the memory store, overlays, written
//! documents, pending requests, the executor's consumer sets): foldhash,
//! seeded at random per process, rather than std's SipHash, which was
//! ~3% of a memory-mode command's instructions for a few dozen short keys.

/// A hash map with the shell's hasher.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A hash set with the shell's hasher.
pub type Set<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
