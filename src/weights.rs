//! Safetensors checkpoints (single file or sharded with an index), memory-mapped.
//! Tensors stay in the map in their stored dtype; the engine converts on the fly.

use crate::error::{Error, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

/// Bytes of one tensor: a window into a memory map, or an owned copy when the
/// window is not aligned for its element type.
#[derive(Clone)]
enum Bytes {
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<u64>>, usize),
}

/// A tensor as stored in the checkpoint.
#[derive(Clone)]
pub struct Tensor {
    // Private outside the crate: `data()` trusts them to describe `bytes`.
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    bytes: Bytes,
}

/// Typed view of a tensor's elements.
pub enum TensorData<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Tensor {
    fn raw(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Bytes::Owned(v, len) => {
                // SAFETY: a Vec<u64> is at least `len` bytes long and u8 has no alignment.
                unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, *len) }
            }
        }
    }

    /// An owned, aligned copy of little-endian element bytes (unaligned
    /// checkpoint windows; tensors built in memory by benches and tests).
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, data: &[u8]) -> Tensor {
        assert_eq!(data.len(), shape.iter().product::<usize>() * dtype.size());
        let len = data.len();
        let mut v = vec![0u64; len.div_ceil(8)];
        // SAFETY: v has at least `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), v.as_mut_ptr() as *mut u8, len) };
        Tensor {
            dtype,
            shape,
            bytes: Bytes::Owned(Arc::new(v), len),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn data(&self) -> TensorData<'_> {
        let raw = self.raw();
        let n = self.numel();
        // SAFETY: construction guarantees alignment and `raw.len() == n * size`;
        // every bit pattern is a valid f32/bf16/f16.
        unsafe {
            match self.dtype {
                DType::F32 => {
                    TensorData::F32(std::slice::from_raw_parts(raw.as_ptr() as *const f32, n))
                }
                DType::BF16 => {
                    TensorData::BF16(std::slice::from_raw_parts(raw.as_ptr() as *const bf16, n))
                }
                DType::F16 => {
                    TensorData::F16(std::slice::from_raw_parts(raw.as_ptr() as *const f16, n))
                }
            }
        }
    }

    /// Rows `ids` of a matrix, in that order, as an owned tensor of the same dtype.
    pub fn gather_rows(&self, ids: &[u32]) -> Tensor {
        let row = self.shape[1] * self.dtype.size();
        let raw = self.raw();
        let mut data = Vec::with_capacity(ids.len() * row);
        for &i in ids {
            data.extend_from_slice(&raw[i as usize * row..(i as usize + 1) * row]);
        }
        Tensor::from_bytes(self.dtype, vec![ids.len(), self.shape[1]], &data)
    }

    /// Row `i` of a matrix as f32 (embedding lookup).
    pub fn row_f32(&self, i: usize, out: &mut [f32]) {
        let cols = self.shape[1];
        let r = i * cols..(i + 1) * cols;
        match self.data() {
            TensorData::F32(s) => out.copy_from_slice(&s[r]),
            TensorData::BF16(s) => out.iter_mut().zip(&s[r]).for_each(|(o, w)| *o = w.to_f32()),
            TensorData::F16(s) => out.iter_mut().zip(&s[r]).for_each(|(o, w)| *o = w.to_f32()),
        }
    }

    /// Copy out as f32 (for small tensors such as norm weights).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.data() {
            TensorData::F32(s) => s.to_vec(),
            TensorData::BF16(s) => s.iter().map(|x| x.to_f32()).collect(),
            TensorData::F16(s) => s.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Whether any element is NaN or infinite (all exponent bits set).
    pub fn has_non_finite(&self) -> bool {
        match self.data() {
            TensorData::F32(s) => any_exponent_all_ones(s, |x| x.to_bits(), 0x7f80_0000),
            TensorData::BF16(s) => any_exponent_all_ones(s, |x| x.to_bits() as u32, 0x7f80),
            TensorData::F16(s) => any_exponent_all_ones(s, |x| x.to_bits() as u32, 0x7c00),
        }
    }

    /// Let the OS drop this tensor's pages of the checkpoint mapping from
    /// the process's memory (Linux `madvise(MADV_DONTNEED)`), once an engine
    /// holds its own copy, so that a loaded model is resident once and not
    /// twice. The tensor stays readable: a later read faults its pages back
    /// in from the file. Pages it shares with neighbouring tensors go too,
    /// and come back the same way.
    pub fn release(&self) {
        if let Bytes::Mapped { map, offset, len } = &self.bytes {
            release(map, *offset, *len);
        }
    }
}

/// Drop bytes `offset..offset + len` of `map` from the process's memory
/// (see [`Tensor::release`]). A hint: where the OS declines, nothing changes.
fn release(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: every map is a read-only shared file mapping (`map_file`), so
    // dropping its pages discards nothing: a later read sees the file's
    // bytes again (which we already assume no other process changes while
    // it is mapped).
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

/// Whether any of `s`'s bit patterns has every bit of `exponent` set. The
/// check reads a whole checkpoint at load, so it folds blocks without an
/// early exit (which vectorizes) and stops between blocks.
fn any_exponent_all_ones<T: Copy>(s: &[T], bits: impl Fn(T) -> u32, exponent: u32) -> bool {
    s.chunks(4096).any(|block| {
        block
            .iter()
            .fold(false, |bad, &x| bad | (bits(x) & exponent == exponent))
    })
}

/// All tensors of a checkpoint, by name, with the file each came from.
pub struct WeightStore {
    tensors: HashMap<String, (Tensor, PathBuf)>,
    maps: Vec<Arc<Mmap>>,
}

fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only; like every mmap-based loader we
    // assume it is not truncated by another process while mapped.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(map))
}

impl WeightStore {
    /// Load `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut store = WeightStore {
            tensors: HashMap::new(),
            maps: Vec::new(),
        };
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::weights(format!("{}: invalid JSON: {e}", index.display())))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::weights(format!("{}: no `weight_map` object", index.display()))
                })?;
            let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, shard) in map {
                let shard = shard.as_str().ok_or_else(|| {
                    Error::weights(format!(
                        "{}: shard of `{name}` is not a string",
                        index.display()
                    ))
                })?;
                if shard.contains('/') || shard.contains('\\') || shard.contains("..") {
                    return Err(Error::weights(format!(
                        "{}: shard name `{shard}` must be a file in the checkpoint directory",
                        index.display()
                    )));
                }
                by_shard
                    .entry(shard.to_string())
                    .or_default()
                    .push(name.clone());
            }
            for (shard, names) in by_shard {
                let path = dir.join(&shard);
                if !path.exists() {
                    return Err(Error::weights(format!(
                        "shard {} (listed in {} for tensor `{}`) is missing",
                        path.display(),
                        index.display(),
                        names[0]
                    )));
                }
                store.add_file(&path)?;
                for name in names {
                    if !store.tensors.contains_key(&name) {
                        return Err(Error::weights(format!(
                            "{}: tensor `{name}` is listed in {} but not stored in that shard",
                            path.display(),
                            index.display()
                        )));
                    }
                }
            }
        } else if single.exists() {
            store.add_file(&single)?;
        } else {
            return Err(Error::weights(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        }
        Ok(store)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let map = map_file(path)?;
        let st = SafeTensors::deserialize(&map[..]).map_err(|e| {
            Error::weights(format!("{}: corrupt safetensors file: {e}", path.display()))
        })?;
        let base = map.as_ptr() as usize;
        self.maps.push(map.clone());
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::BF16 => DType::BF16,
                Dtype::F16 => DType::F16,
                other => {
                    return Err(Error::weights(format!(
                    "{}: tensor `{name}` has dtype {other:?}; only F32, BF16 and F16 are supported",
                    path.display()
                )))
                }
            };
            let data = view.data();
            let offset = data.as_ptr() as usize - base;
            let len = data.len();
            let tensor = if offset.is_multiple_of(dtype.size()) && base.is_multiple_of(8) {
                let bytes = Bytes::Mapped {
                    map: map.clone(),
                    offset,
                    len,
                };
                Tensor {
                    dtype,
                    shape: view.shape().to_vec(),
                    bytes,
                }
            } else {
                Tensor::from_bytes(dtype, view.shape().to_vec(), data)
            };
            if self
                .tensors
                .insert(name.clone(), (tensor, path.to_path_buf()))
                .is_some()
            {
                return Err(Error::weights(format!(
                    "{}: tensor `{name}` is stored in more than one file",
                    path.display()
                )));
            }
        }
        // The header (its length, then JSON) is parsed; tensors are released
        // one by one as an engine copies them.
        let header = 8 + u64::from_le_bytes(map[..8].try_into().expect("8 bytes")) as usize;
        release(&map, 0, header);
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Fetch a tensor and check its shape. Errors name the tensor and its file.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (t, path) = self.tensors.get(name).ok_or_else(|| {
            Error::weights(format!("tensor `{name}` is missing from the checkpoint"))
        })?;
        if t.shape != shape {
            return Err(Error::weights(format!(
                "{}: tensor `{name}` has shape {:?}, expected {:?}",
                path.display(),
                t.shape,
                shape
            )));
        }
        if t.has_non_finite() {
            return Err(Error::weights(format!(
                "{}: tensor `{name}` contains NaN or infinite values",
                path.display()
            )));
        }
        Ok(t.clone())
    }

    /// [`Tensor::release`] for every file: once an engine holds its own
    /// copies, nothing of the checkpoint needs to stay resident (the header
    /// that parsing read, tensors read since; what is read later faults
    /// back in).
    pub fn release(&self) {
        for map in &self.maps {
            release(map, 0, map.len());
        }
    }

    /// The most common dtype among the stored tensors.
    pub fn dominant_dtype(&self) -> Option<DType> {
        let mut counts: HashMap<&'static str, (usize, DType)> = HashMap::new();
        for (t, _) in self.tensors.values() {
            counts.entry(t.dtype.name()).or_insert((0, t.dtype)).0 += t.numel();
        }
        counts.values().max_by_key(|(n, _)| *n).map(|(_, d)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor of `n` finite values with `bad` at `at` (in every dtype).
    fn tensor_with(dtype: DType, n: usize, at: usize, bad: f32) -> Tensor {
        let value = |i: usize| {
            if i == at {
                bad
            } else {
                ((i % 1000) as f32 - 500.0) * 0.5
            }
        };
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| match dtype {
                DType::F32 => value(i).to_le_bytes().to_vec(),
                DType::BF16 => bf16::from_f32(value(i)).to_le_bytes().to_vec(),
                DType::F16 => f16::from_f32(value(i)).to_le_bytes().to_vec(),
            })
            .collect();
        Tensor::from_bytes(dtype, vec![n], &bytes)
    }

    #[test]
    fn non_finite_values_are_found_in_every_block_and_dtype() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let n = 3 * 4096 + 5;
            assert!(!tensor_with(dtype, n, 0, 1.0).has_non_finite());
            // The largest finite value of each dtype is not flagged.
            let max = match dtype {
                DType::F32 => f32::MAX,
                DType::BF16 => bf16::MAX.to_f32(),
                DType::F16 => f16::MAX.to_f32(),
            };
            assert!(!tensor_with(dtype, n, 7, max).has_non_finite());
            assert!(!tensor_with(dtype, n, 7, -max).has_non_finite());
            for at in [0, 4095, 4096, n - 1] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    assert!(
                        tensor_with(dtype, n, at, bad).has_non_finite(),
                        "{bad} at {at} in {}",
                        dtype.name()
                    );
                }
            }
        }
    }
}
