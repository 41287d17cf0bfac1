//! Per-thread buffers reused across layers and passes, so that the decode
//! path does not allocate (or zero) its intermediates on every layer.

use std::cell::RefCell;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `N` buffers of at least the given lengths. Their contents
/// are whatever the last user left: `f` must write every element it reads.
/// Buffers come from this thread's pool and go back to it after `f`, so a
/// thread that runs the same pass again allocates nothing; nested calls (a
/// worker that picks up another pass while it waits) simply take fresh ones.
pub fn with<const N: usize, R>(lens: [usize; N], f: impl FnOnce(&mut [&mut [f32]; N]) -> R) -> R {
    let mut bufs: [Vec<f32>; N] = std::array::from_fn(|_| {
        POOL.with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
            .unwrap_or_default()
    });
    for (b, &n) in bufs.iter_mut().zip(&lens) {
        if b.len() < n {
            b.resize(n, 0.0);
        }
    }
    let r = {
        let mut it = bufs.iter_mut().zip(lens);
        let mut views: [&mut [f32]; N] = std::array::from_fn(|_| {
            let (b, n) = it.next().expect("N buffers");
            &mut b[..n]
        });
        f(&mut views)
    };
    POOL.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.extend(bufs);
        }
    });
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_have_the_asked_lengths_and_are_reused() {
        let first = super::with([3, 5], |[a, b]| {
            a.fill(1.0);
            b.fill(2.0);
            (a.len(), b.len(), a.as_ptr() as usize)
        });
        assert_eq!((first.0, first.1), (3, 5));
        // The same thread gets pooled buffers back (one of the two).
        let again = super::with([2], |[a]| (a.len(), a.as_ptr() as usize));
        assert_eq!(again.0, 2);
        // Nested use takes other buffers and still works.
        super::with([4], |[a]| {
            a.fill(0.5);
            super::with([4], |[b]| {
                b.fill(1.5);
                assert_eq!(b.len(), 4);
            });
            assert!(a.iter().all(|&v| v == 0.5));
        });
    }
}
