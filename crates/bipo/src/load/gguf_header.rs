//! A strict GGUF header parser (versions 2 and 3, little-endian).
//!
//! It builds candle's [`Content`], so tensor reads stay candle's, but every length,
//! count, dimension and offset is checked against the file before anything is
//! allocated, arithmetic never overflows, and ambiguity is an error: duplicate
//! metadata keys, duplicate tensor names, a zero or non-power-of-two alignment,
//! tensors that run past the end of the file. Written because candle 0.11's parser
//! (read in its source) divides by a zero `general.alignment` and keeps the last of
//! duplicate names silently.

use std::collections::HashMap;
use std::io::Read;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;

/// Longest string accepted (keys, values, tensor names): llama.cpp's limit.
const MAX_STRING_BYTES: u64 = 1 << 30;
/// Most tensor dimensions (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays inside arrays.
const MAX_ARRAY_DEPTH: usize = 4;
/// Alignment of the tensor data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Reads bytes while counting how many are left in the file.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
}

type Res<T> = std::result::Result<T, String>;

impl<R: Read> Cursor<R> {
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Res<[u8; N]> {
        if self.remaining() < N as u64 {
            return Err(format!("truncated at byte {} reading {what}", self.pos));
        }
        let mut b = [0u8; N];
        self.inner
            .read_exact(&mut b)
            .map_err(|e| format!("reading {what} at byte {}: {e}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Res<u32> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Res<u64> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    /// A count of items that each take at least `min_bytes`: refused if the rest of the
    /// file cannot hold them, so no allocation is ever sized by an unchecked number.
    fn count(&mut self, what: &str, min_bytes: u64) -> Res<u64> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_bytes) > self.remaining() {
            return Err(format!(
                "{what} is {n}, more than the {} bytes left in the file can hold",
                self.remaining()
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Res<String> {
        let n = self.u64(what)?;
        if n > MAX_STRING_BYTES || n > self.remaining() {
            return Err(format!(
                "{what} at byte {} claims {n} bytes, {} are left",
                self.pos,
                self.remaining()
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut v)
            .map_err(|e| format!("reading {what}: {e}"))?;
        self.pos += n;
        // Some writers NUL-terminate strings although the format does not.
        while v.last() == Some(&0) {
            v.pop();
        }
        String::from_utf8(v).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Res<Value> {
        let b1 = |c: &mut Self| c.bytes::<1>(key).map(|b| b[0]);
        Ok(match ty {
            0 => Value::U8(b1(self)?),
            1 => Value::I8(b1(self)? as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_le_bytes(self.bytes(key)?)),
            7 => match b1(self)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("metadata `{key}`: bool byte {b}")),
            },
            8 => Value::String(self.string(&format!("metadata `{key}`"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("metadata `{key}`: arrays nested too deep"));
                }
                let elem = self.u32(key)?;
                let n = self.count(&format!("metadata `{key}` array length"), min_size(elem))?;
                let mut out = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    out.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(out)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_le_bytes(self.bytes(key)?)),
            t => return Err(format!("metadata `{key}`: unknown value type {t}")),
        })
    }
}

/// Fewest bytes one value of GGUF type `ty` takes on disk (1 for unknown types, which
/// fail when read).
fn min_size(ty: u32) -> u64 {
    match ty {
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

fn dtype(code: u32) -> Option<GgmlDType> {
    use GgmlDType::*;
    Some(match code {
        0 => F32,
        1 => F16,
        2 => Q4_0,
        3 => Q4_1,
        6 => Q5_0,
        7 => Q5_1,
        8 => Q8_0,
        9 => Q8_1,
        10 => Q2K,
        11 => Q3K,
        12 => Q4K,
        13 => Q5K,
        14 => Q6K,
        15 => Q8K,
        30 => BF16,
        _ => return None,
    })
}

/// Parses the header of a GGUF file of `len` bytes from `reader` (positioned at byte 0).
/// The error is a reason without the file name; the caller adds it.
pub fn parse(reader: impl Read, len: u64) -> Res<Content> {
    let mut c = Cursor {
        inner: reader,
        pos: 0,
        len,
    };
    if &c.bytes::<4>("magic")? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let magic = match c.u32("version")? {
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => return Err(format!("GGUF version {v} is not supported (2 and 3 are)")),
    };
    // A tensor info takes at least 8 (name length) + 4 + 4 + 8 bytes, a metadata
    // entry 8 (key length) + 4 + 1.
    let n_tensors = c.count("tensor count", 24)?;
    let n_kv = c.count("metadata count", 13)?;
    let mut metadata = HashMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    let mut tensor_infos = HashMap::new();
    let mut extents = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (max {MAX_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let code = c.u32(&name)?;
        let dt = dtype(code).ok_or_else(|| format!("tensor `{name}`: unknown type {code}"))?;
        let offset = c.u64(&name)?;
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= len.saturating_mul(8))
            .ok_or_else(|| format!("tensor `{name}`: shape {dims:?} is larger than the file"))?;
        // An empty tensor is meaningless, and candle would build a typed slice from the
        // dangling (byte-aligned) pointer of an empty buffer: found by fuzzing with
        // debug assertions (`fuzz/regressions/`).
        if elems == 0 {
            return Err(format!("tensor `{name}` has no elements (shape {dims:?})"));
        }
        let block = dt.block_size() as u64;
        if elems % block != 0 || dims.first().is_some_and(|&d| d % block != 0) {
            return Err(format!(
                "tensor `{name}`: shape {dims:?} does not split into {dt:?} blocks of {block}"
            ));
        }
        let bytes = elems / block * dt.type_size() as u64;
        extents.push((name.clone(), offset, bytes));
        // GGUF lists dimensions innermost first; candle's shapes are outermost first.
        dims.reverse();
        let shape: Vec<usize> = dims.into_iter().map(|d| d as usize).collect();
        let info = TensorInfo {
            ggml_dtype: dt,
            shape: shape.into(),
            offset,
        };
        if tensor_infos.insert(name.clone(), info).is_some() {
            return Err(format!("tensor `{name}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => *a as u64,
        Some(v) => return Err(format!("general.alignment {v:?} is not a power-of-two u32")),
    };
    let data_start = c.pos.div_ceil(alignment) * alignment;
    for (name, offset, bytes) in extents {
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}` offset {offset} is not {alignment}-aligned"
            ));
        }
        let end = data_start
            .checked_add(offset)
            .and_then(|s| s.checked_add(bytes))
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                format!("truncated: tensor `{name}` ({bytes} bytes at data offset {offset}) runs past the file's {len} bytes")
            })?;
        debug_assert!(end <= len);
    }
    Ok(Content {
        magic,
        metadata,
        tensor_infos,
        tensor_data_offset: data_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file: `kvs` as (key, type, value bytes), tensors as (name, dims, type,
    /// offset), then `data` after the aligned header.
    fn build(
        kvs: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, &[u64], u32, u64)],
        data: &[u8],
    ) -> Vec<u8> {
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        };
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kvs.len() as u64).to_le_bytes());
        for (k, t, v) in kvs {
            s(&mut b, k);
            b.extend(t.to_le_bytes());
            b.extend(v);
        }
        for (n, dims, t, off) in tensors {
            s(&mut b, n);
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(t.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(data);
        b
    }

    fn parse_bytes(b: &[u8]) -> Res<Content> {
        parse(b, b.len() as u64)
    }

    #[test]
    fn a_well_formed_file_parses() {
        let b = build(
            &[("a", 4, 7u32.to_le_bytes().to_vec())],
            &[("t", &[4], 0, 0)],
            &[0; 16],
        );
        let c = parse_bytes(&b).unwrap();
        assert_eq!(c.tensor_infos["t"].shape.dims(), &[4]);
    }

    #[test]
    fn ambiguous_or_impossible_headers_are_errors_not_panics() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                build(
                    &[("general.alignment", 4, 0u32.to_le_bytes().to_vec())],
                    &[],
                    &[],
                ),
                "alignment",
            ),
            (
                build(&[("a", 0, vec![1]), ("a", 0, vec![2])], &[], &[]),
                "appears twice",
            ),
            (
                build(&[], &[("t", &[4], 0, 0), ("t", &[4], 0, 0)], &[0; 16]),
                "appears twice",
            ),
            (
                build(&[], &[("t", &[u64::MAX, 4], 0, 0)], &[]),
                "larger than the file",
            ),
            (build(&[], &[("t", &[4], 0, 0)], &[0; 8]), "truncated"),
            (
                build(&[], &[("t", &[4], 0, u64::MAX - 4)], &[0; 16]),
                "not 32-aligned",
            ),
            (
                build(&[], &[("t", &[4], 0, u64::MAX - 31)], &[0; 16]),
                "runs past",
            ),
            (
                build(&[], &[("t", &[1, 1, 1, 1, 1], 0, 0)], &[]),
                "dimensions",
            ),
            (build(&[], &[("t", &[30], 2, 0)], &[0; 64]), "blocks of 32"),
            (build(&[("a", 99, vec![])], &[], &[]), "unknown value type"),
            (build(&[("a", 7, vec![2])], &[], &[]), "bool byte"),
            (build(&[], &[("t", &[0, 4], 0, 0)], &[0; 16]), "no elements"),
        ];
        for (bytes, want) in cases {
            let e = parse_bytes(&bytes).err().unwrap_or_default();
            assert!(e.contains(want), "want `{want}`, got `{e}`");
        }
        // A count that the file cannot hold is refused before anything is allocated.
        let mut b = build(&[], &[], &[]);
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_bytes(&b).unwrap_err().contains("tensor count"));
        // Every prefix of a valid file is an error, never a panic.
        let ok = build(
            &[(
                "k",
                8,
                [3u64.to_le_bytes().to_vec(), b"abc".to_vec()].concat(),
            )],
            &[("t", &[4], 0, 0)],
            &[0; 16],
        );
        for n in 0..ok.len() {
            assert!(parse_bytes(&ok[..n]).is_err(), "prefix {n}");
        }
    }
}
