//! Naive f64 reference implementations, written to be read: the fast paths are tested
//! against these.
