//! AMX tiles for bf16 pairs: one `TDPBF16PS` adds 32 k of up to sixteen
//! rows to sixteen outputs, up to 256 times the multiply-adds of a
//! `VDPBF16PS`.
//!
//! The packed panels are already in the B-tile layout (`panel[kp][o]`, 64
//! bytes per pair of k), so tiles load straight from them. Inputs are
//! packed as whole tiles (`pack_row_pair_tiles`): rows of a tile 16 pairs
//! apart, not a row's length (at a stride of 4 KiB every row of a tile
//! fell into one L1 set).
//!
//! AMX sums a tile's products in an order of its own (not `VDPBF16PS`'s
//! pair by pair), so a kernel set that has it runs every bf16-pair product
//! on it, one row or many: a row's result depends only on its inputs and the
//! weights, never on the rows beside it in a tile or on the tile's height
//! (checked by the tests), and k is always blocked as 16 pairs per tile from
//! the first column.
//!
//! Stable Rust has no AMX intrinsics; the instructions are inline assembly,
//! and the tile registers are touched by nothing else in the process's
//! threads between a kernel's `ldtilecfg` and its `tilerelease`.

use super::{groups, Job, PANEL};
use crate::engine::cpu::tiles::{self, TileConfig};
use std::arch::asm;
use std::arch::x86_64::{__cpuid_count, _mm_prefetch, _xgetbv, _MM_HINT_T0};

/// Whether this CPU and kernel run AMX-BF16, with the process's permission
/// to use tile data requested (once).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        // SAFETY: CPUID leaf 7 exists on every x86-64 with AVX-512 (the
        // call is safe from Rust 1.9x on).
        #[allow(unused_unsafe)]
        let edx = unsafe { __cpuid_count(7, 0) }.edx;
        if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 || !is_x86_feature_detected!("xsave") {
            return false;
        }
        // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves tiles.
        // SAFETY: xsave was detected above, so XGETBV is available.
        let xcr0 = unsafe { xcr0() };
        if xcr0 & (3 << 17) != 3 << 17 {
            return false;
        }
        // Palette 1 (CPUID.(0x1D,1)): at least 8 tiles of 16 rows of 64 bytes.
        // SAFETY: leaf 0x1D exists where AMX-TILE is reported.
        #[allow(unused_unsafe)]
        let p = unsafe { __cpuid_count(0x1D, 1) };
        if p.ebx >> 16 < 8 || p.ebx & 0xFFFF < 64 || p.ecx & 0xFFFF < 16 {
            return false;
        }
        request_tile_permission()
    })
}

#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    _xgetbv(0)
}

/// Linux gives a process tile data only once asked
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); a refusal
/// leaves the AVX-512 kernels in use. The grant is for the whole process:
/// from then on Linux refuses a `sigaltstack` too small for a signal frame
/// with tile data (about 11 KiB), so it is asked only where `amx` is the
/// kernel that will run.
fn request_tile_permission() -> bool {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes the
        // process's permitted xsave features.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Rows per tile, and pairs of k per tile.
pub(super) const TILE_ROWS: usize = 16;
pub(super) const TILE_PAIRS: usize = 16;
/// Panels per pass over a group's inputs: one accumulator tile each.
const PANELS: usize = 4;

/// Tiles 0-3 accumulate four panels of `rows` rows. Without a tail of
/// pairs, 4 and 7 take the inputs of 16 pairs and 5 and 6 the weights, in
/// turn, so that a load overlaps the product before it (tiles are not
/// renamed). With a tail, 4 and 5 alone take 16 pairs and 6 and 7 the last
/// `tail`.
fn config(rows: usize, tail: usize) -> TileConfig {
    let row_bytes = TILE_PAIRS * 4;
    let (inputs, weights) = ((rows, row_bytes), (TILE_PAIRS, row_bytes));
    let [t6, t7] = if tail == 0 {
        [weights, inputs]
    } else {
        [(rows, tail * 4), (tail, row_bytes)]
    };
    TileConfig::new(&[inputs, inputs, inputs, inputs, inputs, weights, t6, t7])
}

/// How far ahead in a panel's weights a tile load prefetches (two tiles):
/// the tile registers let only two weight tiles be in flight, too few to
/// keep a core's stream busy. 2,048 bytes made decoding the 100M model with
/// bf16 products 1.04-1.08x faster and 16 batched sessions 1.05-1.07x (Xeon
/// with AMX, 1-2 threads; 4,096 did no better).
const PREFETCH: usize = 2048;

/// Weights of panel `p` at pair `kp` into tile `b`, then accumulator tile
/// `c` += inputs tile `a` times them.
macro_rules! panel {
    ($a:literal, $b:literal, $c:literal, $w:expr, $ws:expr) => {
        let w = $w as *const i8;
        for line in 0..TILE_PAIRS {
            // Past the matrix's end this is a harmless hint, hence wrapping.
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH + 64 * line));
        }
        asm!(
            concat!("tileloadd tmm", $b, ", [{w} + {ws}*1]"),
            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
            w = in(reg) $w, ws = in(reg) $ws,
            options(nostack, readonly)
        )
    };
}

/// The inputs tile at `x` (rows `xs` bytes apart) into tile `a`, then
/// each of the first `panels` accumulators (tiles 0-3) += it times the
/// weights of pair `kp` on, through weights tiles `b0` and `b1` in turn.
macro_rules! pass {
    ($a:literal, $b0:literal, $b1:literal, $x:expr, $xs:expr, $w:expr, $kp:expr, $panels:expr, $ws:expr) => {{
        let kp = $kp;
        asm!(
            concat!("tileloadd tmm", $a, ", [{x} + {xs}*1]"),
            x = in(reg) $x, xs = in(reg) $xs,
            options(nostack, readonly)
        );
        panel!($a, $b0, 0, $w(0, kp), $ws);
        if $panels > 1 {
            panel!($a, $b1, 1, $w(1, kp), $ws);
        }
        if $panels > 2 {
            panel!($a, $b0, 2, $w(2, kp), $ws);
        }
        if $panels > 3 {
            panel!($a, $b1, 3, $w(3, kp), $ws);
        }
    }};
}

/// Panels `ps` of a bf16-pair product for every input row.
///
/// # Safety
/// [`available`] must be true, and `j` must describe its buffers: `j.w`
/// holds the panels (`j.cols` pairs each), `j.x` `j.rows` rows of `j.cols`
/// pairs packed by [`super::pack::pack_row_pair_tiles`].
pub unsafe fn block_pairs(j: &Job<u32, u32>, ps: std::ops::Range<usize>) {
    let kps = j.cols;
    let (full, tail) = (kps / TILE_PAIRS, kps % TILE_PAIRS);
    let w_stride = PANEL * 4;
    let mut configured = 0;
    let mut sums = [[0f32; PANEL]; TILE_ROWS];
    let mut p0 = ps.start;
    while p0 < ps.end {
        let panels = PANELS.min(ps.end - p0);
        // Row groups inside a panel block: its weights stay in L2 while
        // every group passes over them.
        for (r0, rr) in groups(j.rows, TILE_ROWS) {
            if rr != configured {
                config(rr, tail).load();
                configured = rr;
            }
            tiles::zero_accumulators();
            // The group's inputs: a tile of 16 pairs per kb (rows 64
            // bytes apart), then the tail's rows `tail` pairs apart.
            let x = |kb: usize| j.x.as_ptr().add(r0 * kps + kb * rr * TILE_PAIRS);
            let xs = TILE_PAIRS * 4;
            let w = |p: usize, kp: usize| j.w.as_ptr().add(((p0 + p) * kps + kp) * PANEL);
            if tail == 0 {
                for kb in (0..full).step_by(2) {
                    pass!(4, 5, 6, x(kb), xs, w, kb * TILE_PAIRS, panels, w_stride);
                    if kb + 1 < full {
                        let kp = (kb + 1) * TILE_PAIRS;
                        pass!(7, 5, 6, x(kb + 1), xs, w, kp, panels, w_stride);
                    }
                }
            } else {
                for kb in 0..full {
                    pass!(4, 5, 5, x(kb), xs, w, kb * TILE_PAIRS, panels, w_stride);
                }
                let kp = full * TILE_PAIRS;
                pass!(6, 7, 7, x(full), tail * 4, w, kp, panels, w_stride);
            }
            // A whole panel's sums go straight to the output rows (no
            // scale to apply to bf16 pairs); the last, partial one through
            // `sums` (copying every panel that way took longer than the
            // products of a 512-token prefill).
            macro_rules! store {
                ($c:literal, $p:expr) => {{
                    let j0 = (p0 + $p) * PANEL;
                    if j.scale.is_empty() && j0 + PANEL <= j.n_out {
                        // SAFETY: rows r0..r0+rr of outputs j0..j0+16 are in
                        // `out` (rows x n_out) and written by this task only.
                        asm!(
                            concat!("tilestored [{s} + {ss}*1], tmm", $c),
                            s = in(reg) j.out.0.add(r0 * j.n_out + j0), ss = in(reg) j.n_out * 4,
                            options(nostack)
                        );
                    } else {
                        asm!(
                            concat!("tilestored [{s} + {ss}*1], tmm", $c),
                            s = in(reg) sums.as_mut_ptr(), ss = in(reg) PANEL * 4,
                            options(nostack)
                        );
                        for (r, row) in sums.iter().enumerate().take(rr) {
                            j.store(r0 + r, p0 + $p, row);
                        }
                    }
                }};
            }
            store!(0, 0);
            if panels > 1 {
                store!(1, 1);
            }
            if panels > 2 {
                store!(2, 2);
            }
            if panels > 3 {
                store!(3, 3);
            }
        }
        p0 += panels;
    }
    if configured != 0 {
        tiles::release();
    }
}
