//! Which kernels this CPU runs, chosen once per process, and the rows per
//! tile group each takes.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 with AVX512_BF16: bf16 pairs run on `VDPBF16PS`, everything
    /// else as [`Isa::Avx512`].
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    /// [`Isa::Avx512Bf16`] with AMX-BF16: bf16 pairs run on AMX tiles, for
    /// every row count (AMX rounds its own way; see `amx.rs`).
    #[cfg(target_arch = "x86_64")]
    Amx,
}

/// Kernels this CPU runs, best last. AMX is probed (and the process's
/// permission for tile data asked) only when `LAYERSKIP_KERNEL` does not
/// cap the choice below it.
pub(super) fn supported() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut v = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        v.push(Isa::Avx2);
        if is_x86_feature_detected!("avx512f") {
            v.push(Isa::Avx512);
            if is_x86_feature_detected!("avx512bf16") {
                v.push(Isa::Avx512Bf16);
                if !capped_below_amx() && amx::available() {
                    v.push(Isa::Amx);
                }
            }
        }
    }
    v
}

/// `LAYERSKIP_KERNEL`, or "" where unset.
fn cap() -> String {
    std::env::var("LAYERSKIP_KERNEL").unwrap_or_default()
}

/// Whether `LAYERSKIP_KERNEL` names a kernel other than `amx`.
#[cfg(target_arch = "x86_64")]
fn capped_below_amx() -> bool {
    let below = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];
    below.map(kernel_name_of).contains(&cap().as_str())
}

/// The best kernel this CPU runs;
/// `LAYERSKIP_KERNEL=portable|avx2|avx512|avx512bf16|amx` caps it (results
/// are identical either way, only speed differs, except that bf16 products
/// on `amx` round as AMX does).
pub(super) fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let all = supported();
        let cap = cap();
        let capped = all.iter().rev().find(|i| kernel_name_of(**i) == cap);
        *capped.unwrap_or(all.last().expect("portable is always supported"))
    })
}

/// Whether bf16 products run on AMX tiles (attention in bf16 mode then
/// runs on them too, for the same reason: one rounding for every row count).
pub fn bf16_on_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    return isa() == Isa::Amx;
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Name of the kernel that runs products with bf16 products or without
/// (for bench reports): the AVX512_BF16 and AMX kernels run only bf16 pairs.
pub fn kernel_name(bf16_products: bool) -> &'static str {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 | Isa::Amx if !bf16_products => kernel_name_of(Isa::Avx512),
        isa => kernel_name_of(isa),
    }
}

pub(super) fn kernel_name_of(isa: Isa) -> &'static str {
    match isa {
        Isa::Portable => "portable",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "avx512",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => "avx512bf16",
        #[cfg(target_arch = "x86_64")]
        Isa::Amx => "amx",
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) trait Kernel: avx2::Load16 + avx512::Load16 {}
#[cfg(target_arch = "x86_64")]
impl<T: avx2::Load16 + avx512::Load16> Kernel for T {}
#[cfg(not(target_arch = "x86_64"))]
pub(super) trait Kernel: Weight {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: Weight> Kernel for T {}

/// Rows per group of the AVX-512 kernels (see `avx512::block`), of the
/// bf16-pair kernel on AVX512_BF16, and of its emulation with AVX-512F.
pub(super) const AVX512_GROUP: usize = 9;
pub(super) const PAIR_GROUP: usize = 9;
pub(super) const EMULATED_PAIR_GROUP_512: usize = 6;
/// Rows per group of the AVX2 kernel (see `avx2::block`).
pub(super) const AVX2_GROUP: usize = 5;

/// Rows per group of the AVX2 int8 kernel (see `avx2::block_int8`).
pub(super) const AVX2_INT8_GROUP: usize = 4;

/// Rows per tile group of `m`'s kernel: as many accumulators as the
/// registers hold (the layout of packed inputs; results do not depend on
/// it). AMX packs its own ([`pack_row_pair_tiles`]).
pub(super) fn group_rows(isa: Isa, m: &Mat) -> usize {
    let pairs = m.pairs();
    #[cfg(target_arch = "x86_64")]
    if let Packed::I8 { .. } = m.packed {
        return match isa {
            Isa::Portable => 8,
            _ if vnni(isa) => AVX512_GROUP,
            _ => AVX2_INT8_GROUP,
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if pairs => amx::TILE_ROWS,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 if pairs => PAIR_GROUP,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if pairs => EMULATED_PAIR_GROUP_512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => AVX2_GROUP,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => AVX512_GROUP,
        Isa::Portable => 8,
    }
}

pub(super) fn run_typed<W: Kernel>(j: &Job<W>, ps: std::ops::Range<usize>, isa: Isa) {
    // SAFETY: `isa()` checked that the CPU has the features of each kernel.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::block(j, ps) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { avx512::block(j, ps) },
        Isa::Portable => block_portable(j, ps),
    }
}

/// Whether `isa` runs bf16 pairs as [`HighFirst`] steps over f32 inputs
/// (AVX2: its f32 tiles are the fastest way it has to emulate
/// `VDPBF16PS`).
pub(super) fn pairs_as_f32(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        return true;
    }
    let _ = isa;
    false
}

pub(super) fn run_high_first(j: &Job<HighFirst>, ps: std::ops::Range<usize>, isa: Isa) {
    match isa {
        // SAFETY: `isa()` checked that the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::block(j, ps) },
        _ => unreachable!("only AVX2 packs bf16 pairs' inputs as f32"),
    }
}

pub(super) fn run_pairs(j: &Job<u32, u32>, ps: std::ops::Range<usize>, isa: Isa) {
    // SAFETY: `isa()` checked that the CPU has the features of each kernel.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => unsafe { avx512::block_pairs(j, ps) },
        #[cfg(target_arch = "x86_64")]
        Isa::Amx => unsafe { amx::block_pairs(j, ps) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::block_pairs_emulated(j, ps) },
        Isa::Portable => block_portable_pairs(j, ps),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unreachable!("AVX2 runs bf16 pairs as HighFirst steps"),
    }
}

/// Whether `isa`'s int8 products run on AVX512_VNNI (`VPDPBUSD`).
#[cfg(target_arch = "x86_64")]
pub(super) fn vnni(isa: Isa) -> bool {
    matches!(isa, Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx)
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

pub(super) fn run_int8(j: &Job<Quad, u32>, ps: std::ops::Range<usize>, isa: Isa) {
    // SAFETY: `isa()` checked that the CPU has AVX2 (and AVX-512F), and
    // `vnni` checks the rest.
    match isa {
        #[cfg(target_arch = "x86_64")]
        _ if vnni(isa) => unsafe { avx512::block_int8(j, ps) },
        Isa::Portable => int8::block_portable_int8(j, ps),
        #[cfg(target_arch = "x86_64")]
        _ => unsafe { avx2::block_int8(j, ps) },
    }
}
