//! Fallible host allocation. Every CPU buffer whose size a user can choose (a shape, a range, a
//! batch) is allocated here, so that a size the machine cannot hold is an
//! [`Error::OutOfMemory`](crate::Error::OutOfMemory) naming the op and the bytes instead of
//! Rust's abort ("memory allocation of N bytes failed") or a capacity-overflow panic.
//! What this cannot catch: an allocation the OS grants lazily and then cannot back (Linux
//! overcommit); the CLI estimates a run's memory against `MemAvailable` before it starts for that.

use crate::{Device, Error, Result};

/// An empty vector with room for exactly `n` elements of `T` (a recycled buffer from
/// [`super::pool`] when it holds one), or `Error::OutOfMemory` for `op`.
pub(crate) fn with_capacity<T: 'static>(op: &'static str, n: usize) -> Result<Vec<T>> {
    if let Some(v) = super::pool::take(n) {
        return Ok(v);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::out_of_memory(op, n, std::mem::size_of::<T>(), Device::Cpu))?;
    Ok(v)
}

/// `n` copies of `value`, or `Error::OutOfMemory` for `op`.
pub(crate) fn filled<T: Clone + 'static>(op: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = with_capacity(op, n)?;
    v.resize(n, value);
    Ok(v)
}

/// `n` copies of `value` in a new buffer (never a recycled one) whose whole 2 MiB pages are advised
/// as huge pages before they are first written ([`super::allocator::advise_huge_pages`]): for
/// buffers read over and over (a model's weights in decode), or `Error::OutOfMemory` for `op`.
pub(crate) fn filled_in_huge_pages<T: Clone>(op: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::out_of_memory(op, n, std::mem::size_of::<T>(), Device::Cpu))?;
    super::allocator::advise_huge_pages(v.as_ptr().cast(), n * std::mem::size_of::<T>());
    v.resize(n, value);
    Ok(v)
}

/// `v` as `n` copies of `value`, reusing its buffer when it holds `n` (growing it exactly to `n`
/// otherwise), or `Error::OutOfMemory` for `op`: for scratch kept between calls.
pub(crate) fn refill<T: Clone>(op: &'static str, v: &mut Vec<T>, n: usize, value: T) -> Result<()> {
    v.clear();
    v.try_reserve_exact(n)
        .map_err(|_| Error::out_of_memory(op, n, std::mem::size_of::<T>(), Device::Cpu))?;
    v.resize(n, value);
    Ok(())
}

/// The first `n` items of `items`, collected into a vector allocated up front.
pub(crate) fn collect<T: 'static>(op: &'static str, n: usize, items: impl IntoIterator<Item = T>) -> Result<Vec<T>> {
    let mut v = with_capacity(op, n)?;
    v.extend(items.into_iter().take(n));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_size_is_an_error_naming_the_op_and_the_bytes() {
        let err = filled("zeros", 1 << 60, 0f64).unwrap_err().to_string();
        assert!(err.contains("zeros"), "{err}");
        assert!(err.contains(&((1u128 << 60) * 8).to_string()), "{err}");
        // past usize::MAX bytes: reported exactly, not wrapped
        let err = with_capacity::<f64>("rand", usize::MAX).unwrap_err().to_string();
        assert!(err.contains(&(usize::MAX as u128 * 8).to_string()), "{err}");
    }

    #[test]
    fn a_possible_size_is_allocated_and_filled() {
        assert_eq!(filled("full", 3, 7u32).unwrap(), vec![7, 7, 7]);
        assert_eq!(collect("arange", 2, 0..10).unwrap(), vec![0, 1]);
    }
}
