//! `--lora`: PEFT LoRA adapters merged at load, against PEFT itself. The adapters and
//! the logits PEFT computed with them active (unmerged) are fixtures made by
//! `scripts/make-lora-fixtures.py` on the tiny family models; bipo must agree within
//! 1e-4 loading the Hugging Face folder and the llama.cpp GGUF (whose Q/K rows are
//! stored permuted: the merge must land in Hugging Face order). Bad adapters are refused
//! by name, and the model's identity (sha256, vector metadata) includes the adapters.

mod common;

use std::path::{Path, PathBuf};

use bipo::load::{load, LoadOptions, LoadedModel};
use bipo::models::Mode;
use bipo::steer::Steering;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn with_lora(model: &Path, adapters: &[PathBuf]) -> bipo::Result<LoadedModel> {
    let opts = LoadOptions {
        lora: adapters.to_vec(),
        ..Default::default()
    };
    load(model.to_str().unwrap(), &opts)
}

fn logits(lm: &LoadedModel, input: &[u32], mode: Mode) -> Vec<Vec<f32>> {
    common::logits(&lm.model, input, &Steering::none(), mode)
}

struct Reference {
    input: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn reference(family: &str) -> Reference {
    let p = fixtures().join("lora").join(family).join("reference.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    Reference {
        input: serde_json::from_value(v["input_ids"].clone()).unwrap(),
        logits: serde_json::from_value(v["logits"].clone()).unwrap(),
    }
}

#[test]
fn merged_adapters_match_peft_on_folders_and_ggufs() {
    // llama: every projection, alpha_pattern on down_proj, GGUF with permuted Q/K rows;
    // qwen2: q/v on two of three layers, rsLoRA scaling.
    for fam in ["llama", "qwen2"] {
        let r = reference(fam);
        let adapter = fixtures().join("lora").join(fam);
        let base_dir = fixtures().join("families").join(fam);
        for model in [base_dir.clone(), base_dir.join("model.gguf")] {
            let base = load(model.to_str().unwrap(), &Default::default()).unwrap();
            let lm = with_lora(&model, std::slice::from_ref(&adapter)).unwrap();
            let changed = common::max_abs_diff(&logits(&base, &r.input, Mode::Fast), &r.logits);
            assert!(
                changed > 1.0,
                "{fam}: the adapter hardly changes the logits ({changed})"
            );
            for mode in [Mode::Fast, Mode::Differentiable] {
                let d = common::max_abs_diff(&logits(&lm, &r.input, mode), &r.logits);
                println!(
                    "{fam} {} {mode:?}: max |Δ logit| vs PEFT {d:.2e}",
                    model.display()
                );
                assert!(d < TOLERANCE, "{fam} {}: {d} vs PEFT", model.display());
            }
            assert_eq!(lm.lora.len(), 1);
            assert_eq!(lm.lora[0].path, adapter);
        }
    }
}

#[test]
fn the_adapter_is_part_of_the_models_identity() {
    let dir = fixtures().join("families/llama");
    let adapter = fixtures().join("lora/llama");
    let base = load(dir.to_str().unwrap(), &Default::default()).unwrap();
    let tuned = with_lora(&dir, std::slice::from_ref(&adapter)).unwrap();
    let (sb, st) = (
        bipo::load::model_sha256(&base).unwrap().unwrap(),
        bipo::load::model_sha256(&tuned).unwrap().unwrap(),
    );
    assert_ne!(sb, st);
    let record = bipo::run::ModelRecord::of(&tuned).unwrap();
    assert_eq!(record.sha256.as_deref(), Some(st.as_str()));
    assert_eq!(record.lora.len(), 1);
    assert!(record.lora[0].ends_with(&format!("sha256:{}", tuned.lora[0].sha256)));
    // A vector made on the base model warns on the fine-tune (a transfer), not on the base.
    let id = base.identity().unwrap();
    assert!(id.ends_with(&format!("sha256:{sb}")));
    let v = bipo::SteeringVector::single(
        1,
        vec![0.1; 32],
        bipo::VectorMeta {
            name: "v".into(),
            model: Some(id),
            ..Default::default()
        },
    );
    assert_eq!(v.transfer_warning(&base.describe(), Some(&sb)), None);
    let w = v.transfer_warning(&tuned.describe(), Some(&st)).unwrap();
    assert!(w.contains("+ LoRA"), "{w}");
}

/// Writes an adapter folder with one module's A and B.
fn write_adapter(dir: &Path, config: &str, tensors: &[(&str, (usize, usize))]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, (r, c))| {
            let bytes = (0..r * c)
                .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
                .collect();
            (k.to_string(), bytes, vec![*r, *c])
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, b, s)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (k.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn adapters_that_cannot_be_merged_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("families/llama");
    let cfg = r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4}"#;
    let q = "base_model.model.model.layers.0.self_attn.q_proj";
    let err = |dir: &Path| {
        with_lora(&model, &[dir.to_path_buf()])
            .err()
            .unwrap()
            .to_string()
    };
    /// (adapter folder name, config, tensors, expected error)
    type Case<'a> = (&'a str, &'a str, Vec<(String, (usize, usize))>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing-layer",
            cfg,
            vec![
                (
                    "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight".into(),
                    (2, 32),
                ),
                (
                    "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight".into(),
                    (32, 2),
                ),
            ],
            "model.layers.7.self_attn.q_proj.weight`, which this model does not have",
        ),
        (
            "wrong-shape",
            cfg,
            vec![
                (format!("{q}.lora_A.weight"), (2, 32)),
                (format!("{q}.lora_B.weight"), (8, 2)),
            ],
            "B·A is [8, 32] but the model's weight is [32, 32]",
        ),
        (
            "no-b",
            cfg,
            vec![(format!("{q}.lora_A.weight"), (2, 32))],
            "has lora_A but no lora_B",
        ),
        (
            "dora",
            r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_dora": true}"#,
            vec![],
            "DoRA",
        ),
        (
            "bias",
            cfg,
            vec![(format!("{q}.bias"), (1, 32))],
            "not a lora_A/lora_B matrix",
        ),
    ];
    for (name, config, tensors, want) in cases {
        let dir = tmp.path().join(name);
        let t: Vec<(&str, (usize, usize))> =
            tensors.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        write_adapter(&dir, config, &t);
        let e = err(&dir);
        assert!(e.contains(want), "{name}: {e}");
        assert!(e.contains(name), "{name}: the error names the adapter: {e}");
    }
    let e = err(&tmp.path().join("nowhere"));
    assert!(e.contains("adapter_config.json"), "{e}");
}
