//! AMX tile configuration, shared by the bf16 products and attention. The
//! tile registers are touched by nothing else in a thread between a
//! kernel's [`TileConfig::load`] and its [`release`].

use std::arch::asm;

/// `ldtilecfg`'s operand (palette 1).
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
    reserved2: [u8; 16],
}

impl TileConfig {
    /// Tile `t` as `shapes[t]`: (rows, bytes per row); the others unused.
    pub(crate) fn new(shapes: &[(usize, usize)]) -> Self {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
            reserved2: [0; 16],
        };
        for (t, &(rows, bytes)) in shapes.iter().enumerate() {
            c.rows[t] = rows as u8;
            c.colsb[t] = bytes as u16;
        }
        c
    }

    /// Configures this thread's tiles.
    ///
    /// # Safety
    /// The CPU has AMX and the process may use tile data
    /// (`matmul::bf16_on_amx`).
    #[inline(always)]
    pub(crate) unsafe fn load(&self) {
        asm!("ldtilecfg [{}]", in(reg) self as *const Self, options(nostack, readonly));
    }
}

/// Zeros tiles 0-3 (both kernels' accumulators).
///
/// # Safety
/// Tiles are configured ([`TileConfig::load`]).
#[inline(always)]
pub(crate) unsafe fn zero_accumulators() {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

/// Returns this thread's tiles to their initial state (nothing to save on
/// a context switch).
///
/// # Safety
/// As [`TileConfig::load`].
#[inline(always)]
pub(crate) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}
