//! The CPU decode path reuses its buffers: a full-depth step of the bundled
//! model allocates a few small things (logits, bookkeeping), not its layers'
//! intermediates. (Its own binary: it installs a counting allocator.)

use layerskip::{Model, Session};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_decode_step_does_not_allocate_its_layers_intermediates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/layerskip-pycode-8l");
    let model = Model::load(dir).unwrap();
    let l = model.num_layers();
    let mut s = Session::new(model, 256).unwrap();
    s.prefill(&[5, 6, 7, 8]).unwrap();
    for t in 0..10 {
        s.step(10 + t, l).unwrap();
    }
    let (n0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let steps = 50;
    for t in 0..steps {
        s.step(30 + t, l).unwrap();
    }
    let per_step = (ALLOCATIONS.load(Ordering::Relaxed) - n0) / steps as usize;
    let bytes = (BYTES.load(Ordering::Relaxed) - b0) / steps as usize;
    println!("{per_step} allocations, {bytes} bytes per step ({l} layers)");
    // 265 allocations (211 kB) per step before the buffers were reused; one
    // buffer more per product would add 4 per layer.
    assert!(per_step <= 48, "{per_step} allocations per step");
}
