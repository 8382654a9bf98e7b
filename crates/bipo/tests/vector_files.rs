//! Vector files under bad input: truncated, corrupted, wrong dtype or rank, duplicate or
//! out-of-range layers, non-finite values — always a clear error naming the file, never
//! a panic. Also vectors written by other tools (llama.cpp's cvector-generator, repeng).

mod common;

use std::path::{Path, PathBuf};

use bipo::io::{controlvector, pt, read_vector, safetensors as st};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// (file name, tensors, expected error text).
type GgufCase<'a> = (&'a str, Vec<(&'a str, Tensor, GgmlDType)>, &'a str);
/// A safetensors tensor: name, dtype, shape, bytes.
type StTensor<'a> = (&'a str, safetensors::Dtype, Vec<usize>, Vec<u8>);
/// A reader of one format.
type Reader<'a> = &'a dyn Fn(&Path) -> bipo::Result<bipo::SteeringVector>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A control-vector GGUF with the given tensors.
fn gguf(path: &Path, tensors: &[(&str, Tensor, GgmlDType)]) {
    let qs: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(n, t, d)| (n.to_string(), QTensor::quantize(t, *d).unwrap()))
        .collect();
    let arch = gguf_file::Value::String("controlvector".into());
    let refs: Vec<(&str, &QTensor)> = qs.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &refs).unwrap();
}

fn safetensors(path: &Path, tensors: &[StTensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn err(r: bipo::Result<bipo::SteeringVector>, path: &Path, want: &str) {
    let e = r.expect_err(want).to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        e.contains(&*name) && e.contains(want),
        "want `{want}` naming {name}, got `{e}`"
    );
}

#[test]
fn malformed_control_vectors_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let v = |n: usize| Tensor::arange(0f32, n as f32, &dev).unwrap();
    let cases: Vec<GgufCase> = vec![
        (
            "dup.gguf",
            vec![
                ("direction.5", v(32), GgmlDType::F32),
                ("direction.05", v(32), GgmlDType::F32),
            ],
            "bad layer index",
        ),
        (
            "plus.gguf",
            vec![("direction.+5", v(32), GgmlDType::F32)],
            "bad layer index",
        ),
        (
            "huge.gguf",
            vec![("direction.99999999999", v(32), GgmlDType::F32)],
            "bad layer index",
        ),
        (
            "f16.gguf",
            vec![("direction.1", v(32), GgmlDType::F16)],
            "expected F32",
        ),
        (
            "rank2.gguf",
            vec![(
                "direction.1",
                v(64).reshape((2, 32)).unwrap(),
                GgmlDType::F32,
            )],
            "rank 2",
        ),
        (
            "widths.gguf",
            vec![
                ("direction.1", v(32), GgmlDType::F32),
                ("direction.2", v(64), GgmlDType::F32),
            ],
            "widths differ",
        ),
        (
            "nan.gguf",
            vec![("direction.1", (v(32) / 0.0).unwrap(), GgmlDType::F32)],
            "NaN",
        ),
        (
            "none.gguf",
            vec![("other", v(32), GgmlDType::F32)],
            "no `direction.N`",
        ),
    ];
    for (name, tensors, want) in cases {
        let p = d.path().join(name);
        gguf(&p, &tensors);
        err(controlvector::read(&p), &p, want);
    }
    // A width different from the model's is caught when the vector meets the model.
    let p = d.path().join("ok.gguf");
    gguf(&p, &[("direction.3", v(32), GgmlDType::F32)]);
    let ok = controlvector::read(&p).unwrap();
    let e = ok.check_fits(576, 30).unwrap_err().to_string();
    assert!(e.contains("width 32 != model hidden size 576"), "{e}");
    let e = ok.check_fits(32, 3).unwrap_err().to_string();
    assert!(e.contains("layer 3 >= model's 3 layers"), "{e}");
}

#[test]
fn malformed_safetensors_vectors_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    use safetensors::Dtype::{F16, F32};
    let cases: Vec<(&str, Vec<StTensor>, &str)> = vec![
        (
            "dup.safetensors",
            vec![
                ("layer.5", F32, vec![2], f32s(&[1.0, 2.0])),
                ("layer.05", F32, vec![2], f32s(&[1.0, 2.0])),
            ],
            "`layer.05` is not named layer.N",
        ),
        (
            "f16.safetensors",
            vec![("layer.1", F16, vec![2], vec![0; 4])],
            "expected 1-D F32",
        ),
        (
            "rank2.safetensors",
            vec![("layer.1", F32, vec![1, 2], f32s(&[1.0, 2.0]))],
            "expected 1-D F32",
        ),
        (
            "inf.safetensors",
            vec![("layer.1", F32, vec![2], f32s(&[1.0, f32::INFINITY]))],
            "inf",
        ),
        (
            "name.safetensors",
            vec![("weight", F32, vec![2], f32s(&[1.0, 2.0]))],
            "not named layer.N",
        ),
    ];
    for (name, tensors, want) in cases {
        let p = d.path().join(name);
        safetensors(&p, &tensors);
        err(st::read(&p), &p, want);
    }
}

/// Every truncation and many single-byte corruptions of a valid file give an error or
/// a valid vector, never a panic (a small deterministic fuzz that runs in CI; the
/// `cargo fuzz` targets in fuzz/ go much further).
#[test]
fn truncated_and_corrupted_vector_files_never_panic() {
    let d = tempfile::tempdir().unwrap();
    let happy = std::fs::read(common::reference("happy-control-vector.gguf")).unwrap();
    let small_st = {
        let p = d.path().join("s.safetensors");
        safetensors(
            &p,
            &[(
                "layer.1",
                safetensors::Dtype::F32,
                vec![4],
                f32s(&[1.0, 2.0, 3.0, 4.0]),
            )],
        );
        std::fs::read(p).unwrap()
    };
    let pt_bytes = std::fs::read(fixture("arange8.pt")).unwrap();
    let read_pt = |p: &Path| pt::read(p, 1);
    let readers: [(&str, Vec<u8>, Reader); 3] = [
        ("v.gguf", happy, &|p| controlvector::read(p)),
        ("v.safetensors", small_st, &|p| st::read(p)),
        ("v.pt", pt_bytes, &read_pt),
    ];
    for (name, bytes, read) in readers {
        let p = d.path().join(name);
        let step = (bytes.len() / 300).max(1);
        for n in (0..bytes.len()).step_by(step) {
            std::fs::write(&p, &bytes[..n]).unwrap();
            err(read(&p), &p, "");
        }
        let mut state = 0x9E3779B97F4A7C15u64;
        for _ in 0..300 {
            // xorshift: a fixed sequence of positions and byte values.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut b = bytes.clone();
            // Half the hits land in the first 512 bytes, where the header is.
            let span = if state.is_multiple_of(2) {
                b.len().min(512)
            } else {
                b.len()
            };
            let i = (state as usize >> 1) % span;
            b[i] = (state >> 32) as u8;
            std::fs::write(&p, &b).unwrap();
            if let Ok(v) = read(&p) {
                v.validate().unwrap();
            }
        }
    }
}

#[test]
fn a_cvector_generator_file_reads_with_its_29_layers() {
    // Made by llama.cpp's cvector-generator (see ../shared/README.md).
    let v = read_vector(&common::reference("happy-control-vector.gguf")).unwrap();
    assert_eq!(
        v.layers.keys().copied().collect::<Vec<_>>(),
        (1..30).collect::<Vec<_>>()
    );
    assert_eq!(v.hidden_size(), Some(576));
}

#[test]
fn a_repeng_exported_file_reads_with_repengs_layer_numbers() {
    // Written by repeng 0.4's ControlVector.export_gguf (see tests/fixtures/README.md):
    // directions {3: arange(8)/10, 5: -arange(8)/10}, model_type "llama".
    let v = read_vector(&fixture("repeng.gguf")).unwrap();
    assert_eq!(v.layers.keys().copied().collect::<Vec<_>>(), vec![3, 5]);
    let want: Vec<f32> = (0..8).map(|i| i as f32 / 10.0).collect();
    assert_eq!(v.layers[&3], want);
    assert_eq!(v.layers[&5], want.iter().map(|x| -x).collect::<Vec<_>>());
}

/// Inputs that once crashed a fuzz target (kept in fuzz/regressions/): each must now be
/// a clear error.
#[test]
fn fuzz_regressions_are_clear_errors() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/model_gguf_header");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let e = bipo::load::gguf::GgufFile::open(&p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&*p.file_name().unwrap().to_string_lossy()),
            "{e}"
        );
        n += 1;
    }
    assert!(n >= 1, "no regression inputs in {}", dir.display());
}

#[test]
fn a_written_vector_is_the_same_bytes_every_time_and_reads_with_the_safetensors_crate() {
    let d = tempfile::tempdir().unwrap();
    let mut v = bipo::SteeringVector::single(3, vec![0.5, -1.25, 3.0], Default::default());
    v.layers.insert(11, vec![1.0, 2.0, -0.0]);
    let bytes = st::to_bytes(&v);
    // Same vector, same bytes (the metadata map is not written in hash order).
    for _ in 0..8 {
        assert_eq!(st::to_bytes(&v.clone()), bytes);
    }
    let f = d.path().join("v.safetensors");
    st::write(&v, &f).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), bytes);
    // The header is 8-byte aligned and the reference reader agrees on every tensor.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta[st::FORMAT_KEY], st::FORMAT);
    assert!(meta.contains_key(st::META_KEY));
    for (l, want) in &v.layers {
        let t = parsed.tensor(&format!("layer.{l}")).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        assert_eq!(t.shape(), [want.len()]);
        assert_eq!(t.data(), f32s(want));
    }
    assert_eq!(st::read(&f).unwrap().layers, v.layers);
}
