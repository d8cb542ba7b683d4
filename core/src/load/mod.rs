//! Where a range's load comes from, in bounded memory: a split finder that
//! picks the key dividing a range's requests in two, and a sketch of the
//! hottest keys. Pure: callers feed request keys (and, for sampling, random
//! numbers) and read the results.

pub mod hot_keys;
pub mod split_finder;
