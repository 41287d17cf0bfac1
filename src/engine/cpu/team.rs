//! The parallel regions of one forward pass, on worker threads held for
//! the pass.
//!
//! A decoding step of a small model is some 60 short parallel regions (the
//! products of each layer, attention, the head). Started through rayon,
//! each wakes the other workers anew, which a VM pays for in futex calls
//! and inter-processor interrupts: on a 2-vCPU Xeon with AMX, 20 regions of
//! 20 µs each took 1.1 ms through rayon and 0.49 ms held (0.43 ms of work),
//! and two threads decoded the 100M model's int8 at only 1.4x one.
//! [`hold`] instead takes the pool's other workers once per pass (the
//! engine's `enter`): they spin on the team's next region, and park after
//! [`SPIN`] without one. Two threads then decoded 1.1-1.17x faster (int8,
//! f32 and bf16 products alike).
//!
//! A region hands out task indices from one atomic word that carries the
//! region's number, its task count and the next index, so a worker can only
//! claim a task of the region that is running; the region returns once all
//! its tasks are done, so the closure it lent outlives every call. Workers
//! that another pass keeps busy never join: the thread that started the
//! region does every task nobody else claims.

use parking_lot::{Condvar, Mutex};
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

/// How long a worker without a region spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// Bits of the task word: region number, task count, next index.
const INDEX_BITS: u32 = 20;
const MAX_TASKS: usize = (1 << INDEX_BITS) - 1;

type Task<'a> = dyn Fn(usize) + Sync + 'a;

struct Team {
    /// `region << 2 * INDEX_BITS | tasks << INDEX_BITS | next`.
    word: AtomicU64,
    /// The running region's closure (a `*const &Task`), valid while a task
    /// of it is claimed and not done.
    job: AtomicUsize,
    done: AtomicUsize,
    /// Number of the last region, and whether one is running (the holding
    /// thread's alone: a region started inside one of its tasks goes to
    /// rayon).
    region: Cell<u64>,
    running: Cell<bool>,
    /// The first panic of the running region's tasks, raised again by the
    /// thread that started it once no task of it is running.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    stop: AtomicBool,
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `region` and `running` are read and written by the holding
// thread only; every other field is atomic or a lock.
unsafe impl Sync for Team {}

thread_local! {
    /// The team this thread holds, if any.
    static HELD: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

fn unpack(w: u64) -> (u64, usize, usize) {
    let mask = (1u64 << INDEX_BITS) - 1;
    (
        w >> (2 * INDEX_BITS),
        ((w >> INDEX_BITS) & mask) as usize,
        (w & mask) as usize,
    )
}

impl Team {
    /// Claims and runs one task of the current region; false if none is left.
    fn run_one(&self) -> bool {
        let w = self.word.load(Acquire);
        let (_, tasks, next) = unpack(w);
        if next >= tasks {
            return false;
        }
        if self
            .word
            .compare_exchange_weak(w, w + 1, AcqRel, Relaxed)
            .is_ok()
        {
            // SAFETY: task `next` of this region is claimed and not done,
            // so the region's thread is still inside `region` and the
            // closure it published before the word is alive.
            let f: &Task = unsafe { *(self.job.load(Acquire) as *const &Task) };
            // A panic must not leave the region waiting for this task.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(next)));
            if let Err(p) = run {
                self.panic.lock().get_or_insert(p);
            }
            self.done.fetch_add(1, Release);
        }
        true
    }

    /// A held worker: runs tasks while there are any, spins, parks.
    fn serve(&self) {
        let (mut idle, mut spins) = (Instant::now(), 0u32);
        while !self.stop.load(Acquire) {
            if self.run_one() {
                (idle, spins) = (Instant::now(), 0);
                continue;
            }
            std::hint::spin_loop();
            // The clock now and then: reading it is slower than a spin.
            spins = spins.wrapping_add(1);
            if spins % 64 != 0 || idle.elapsed() < SPIN {
                continue;
            }
            let mut g = self.lock.lock();
            self.parked.fetch_add(1, SeqCst);
            while !self.stop.load(SeqCst) && !self.claimable() {
                self.wake.wait(&mut g);
            }
            self.parked.fetch_sub(1, SeqCst);
            idle = Instant::now();
        }
    }

    fn claimable(&self) -> bool {
        let (_, tasks, next) = unpack(self.word.load(SeqCst));
        next < tasks
    }

    /// Wakes parked workers (after a new region or the stop; a worker about
    /// to park counts itself before it checks both, so it is seen here or
    /// sees them).
    fn notify(&self) {
        if self.parked.load(SeqCst) > 0 {
            let _g = self.lock.lock();
            self.wake.notify_all();
        }
    }

    /// `f(0..tasks)` on this thread and whichever held workers join.
    fn region(&self, tasks: usize, f: &Task) {
        let r = self.region.get() + 1;
        self.region.set(r);
        self.running.set(true);
        let fp: *const &Task = &f;
        self.job.store(fp as usize, Release);
        self.done.store(0, Release);
        let mask = (1u64 << (64 - 2 * INDEX_BITS)) - 1;
        let w = (r & mask) << (2 * INDEX_BITS) | (tasks as u64) << INDEX_BITS;
        self.word.store(w, SeqCst);
        self.notify();
        while self.run_one() {}
        while self.done.load(Acquire) < tasks {
            std::hint::spin_loop();
        }
        self.running.set(false);
        if let Some(p) = self.panic.lock().take() {
            std::panic::resume_unwind(p);
        }
    }
}

/// Runs `f` with the current pool's other workers held as a team for the
/// [`for_each`] regions `f` starts on this thread. Inside another `hold`,
/// just runs `f`.
pub fn hold<R>(f: impl FnOnce() -> R) -> R {
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 || !HELD.get().is_null() {
        return f();
    }
    let team = Team {
        word: AtomicU64::new(0),
        job: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        region: Cell::new(0),
        running: Cell::new(false),
        panic: Mutex::new(None),
        stop: AtomicBool::new(false),
        parked: AtomicUsize::new(0),
        lock: Mutex::new(()),
        wake: Condvar::new(),
    };
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| team.serve());
        }
        struct Release<'a>(&'a Team);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                HELD.set(std::ptr::null());
                self.0.stop.store(true, SeqCst);
                self.0.notify();
            }
        }
        HELD.set(&team);
        let _release = Release(&team);
        f()
    })
}

/// Regions of fewer multiply-adds than this run on the calling thread:
/// starting workers costs more than they save.
pub const SERIAL_BELOW: usize = 1 << 17;

/// Whether `tasks` tasks of `work` multiply-adds in all run on this thread.
pub fn serial(tasks: usize, work: usize) -> bool {
    tasks <= 1 || work < SERIAL_BELOW
}

/// `f(i)` for every `i` in `0..tasks`, `work` multiply-adds in all: on this
/// thread where there is one task or less than [`SERIAL_BELOW`] work,
/// else across the team this thread holds, else through rayon.
pub fn for_each(tasks: usize, work: usize, f: impl Fn(usize) + Sync + Send) {
    if serial(tasks, work) {
        return (0..tasks).for_each(f);
    }
    // SAFETY: a held team lives until `hold` returns, which clears `HELD`
    // first.
    match unsafe { HELD.get().as_ref() } {
        Some(team) if !team.running.get() && tasks <= MAX_TASKS => team.region(tasks, &f),
        _ => (0..tasks).into_par_iter().for_each(f),
    }
}

/// `f(i, c)` for every chunk `c` of `chunk` elements of `data` (`i`: its
/// index), as [`for_each`] with `work` multiply-adds in all.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if serial(data.len().div_ceil(chunk), work) {
        return data
            .chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
    // Each chunk behind its own lock, which only its task takes.
    let chunks: Vec<Mutex<&mut [T]>> = data.chunks_mut(chunk).map(Mutex::new).collect();
    for_each(chunks.len(), work, |i| f(i, &mut chunks[i].lock()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once_held_or_not_and_nested_regions_finish() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for held in [false, true] {
            let counts: Vec<AtomicU32> = (0..1000).map(|_| AtomicU32::new(0)).collect();
            let run = || {
                for n in [0, 1, 7, 1000] {
                    for_each(n, SERIAL_BELOW, |i| {
                        counts[i].fetch_add(1, Relaxed);
                        // A region inside a task runs on rayon.
                        for_each(2, SERIAL_BELOW, |_| ());
                    });
                }
                // Past the parking time: parked workers wake.
                std::thread::sleep(SPIN * 3);
                for_each(1000, SERIAL_BELOW, |i| {
                    counts[i].fetch_add(1, Relaxed);
                });
            };
            pool.install(|| if held { hold(run) } else { run() });
            for (i, c) in counts.iter().enumerate() {
                let want = 2 + (i < 7) as u32 + (i < 1) as u32;
                assert_eq!(c.load(Relaxed), want, "task {i}, held {held}");
            }
        }
    }

    #[test]
    fn every_chunk_is_handed_to_one_task_with_its_index() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (held, work) in [(false, 0), (true, 0), (true, SERIAL_BELOW)] {
            let mut data = vec![0u32; 1003];
            let mut run = || {
                for_each_chunk(&mut data, 100, work, |i, c| {
                    assert!(c.len() == 100 || (i == 10 && c.len() == 3));
                    c.iter_mut().for_each(|x| *x += i as u32 + 1);
                })
            };
            pool.install(|| if held { hold(run) } else { run() });
            for (e, &x) in data.iter().enumerate() {
                assert_eq!(
                    x,
                    e as u32 / 100 + 1,
                    "element {e}, held {held}, work {work}"
                );
            }
        }
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_after_the_others_finish() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let ran = AtomicU32::new(0);
        let r = pool.install(|| {
            hold(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    for_each(64, SERIAL_BELOW, |i| {
                        assert!(i != 5, "task 5");
                        ran.fetch_add(1, Relaxed);
                    })
                }))
            })
        });
        assert!(r.is_err());
        assert_eq!(ran.load(Relaxed), 63);
        // The pool still works.
        pool.install(|| hold(|| for_each(3, SERIAL_BELOW, |_| ())));
    }
}
