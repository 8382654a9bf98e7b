//! Position modes on the default model: `prompt` steers only the prompt's positions,
//! `generated` only the generated tokens' — checked against full forwards that steer
//! exactly those positions (a 0/1 mask), teacher-forced on the KV-cached generation;
//! and multiplier 0 is bit-identical to no steering in every mode.

mod common;

use bipo::generate::{generate, GenerateOptions, TokenEvent};
use bipo::load::{load, LoadOptions, LoadedModel};
use bipo::models::Mode;
use bipo::steer::{Positions, Steering};
use candle_core::Tensor;

fn setup() -> (LoadedModel, Vec<u32>, Steering) {
    let m = common::default_model();
    let lm = load(m.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let prompt = lm
        .tokenizer
        .encode(
            "<|im_start|>user\nHow was your day?<|im_end|>\n<|im_start|>assistant\n",
            true,
        )
        .unwrap();
    let v =
        bipo::io::read_vector(&common::root().join("assets/happy-control-vector.gguf")).unwrap();
    let st =
        Steering::from_vectors(&[(v, 6.0)], lm.model.device(), candle_core::DType::F32).unwrap();
    (lm, prompt, st)
}

fn run(lm: &LoadedModel, prompt: &[u32], st: &Steering, positions: Positions) -> Vec<TokenEvent> {
    let opts = GenerateOptions {
        max_tokens: 8,
        stop_at_eos: false,
        positions,
        ..Default::default()
    };
    let mut evs = Vec::new();
    generate(&lm.model, &lm.tokenizer, prompt, st, &opts, |e| {
        evs.push(e.clone());
        Ok(())
    })
    .unwrap();
    evs
}

/// Log-softmax rows of a full forward over `ids`, steered where `mask` is 1.
fn full(lm: &LoadedModel, ids: &[u32], st: &Steering, mask: &[f32]) -> Vec<Vec<f32>> {
    let dev = lm.model.device();
    let x = Tensor::new(ids, dev).unwrap().unsqueeze(0).unwrap();
    let m = Tensor::from_vec(mask.to_vec(), (1, ids.len(), 1), dev).unwrap();
    let logits = lm
        .model
        .forward(&x, 0, None, &st.with_mask(m), None, Mode::Fast)
        .unwrap();
    let rows: Vec<Vec<f32>> = logits.squeeze(0).unwrap().to_vec2().unwrap();
    rows.iter()
        .map(|r| bipo::generate::log_softmax(r))
        .collect()
}

#[test]
fn each_mode_steers_exactly_its_positions() {
    let (lm, prompt, st) = setup();
    let p = prompt.len();
    let mut texts = Vec::new();
    for mode in [Positions::All, Positions::Prompt, Positions::Generated] {
        let evs = run(&lm, &prompt, &st, mode);
        let ids: Vec<u32> = prompt
            .iter()
            .copied()
            .chain(evs.iter().map(|e| e.id))
            .collect();
        // Position i is steered when it is a prompt position (i < p) and the mode steers
        // the prompt, or a generated one and the mode steers those.
        let mask: Vec<f32> = (0..ids.len())
            .map(|i| {
                let on = if i < p {
                    mode.prompt()
                } else {
                    mode.generated()
                };
                on as u8 as f32
            })
            .collect();
        let rows = full(&lm, &ids, &st, &mask);
        let mut worst = 0f32;
        for (k, e) in evs.iter().enumerate() {
            // Token k was predicted at position p - 1 + k.
            let lp = rows[p - 1 + k][e.id as usize];
            worst = worst.max((lp - e.logprob).abs());
        }
        assert!(
            worst < 2e-3,
            "{mode}: cached vs full-recompute log-prob {worst}"
        );
        texts.push(evs.iter().map(|e| e.id).collect::<Vec<_>>());
    }
    let plain = run(&lm, &prompt, &Steering::none(), Positions::All);
    let plain: Vec<u32> = plain.iter().map(|e| e.id).collect();
    // The three modes do different things, and none is the unsteered text.
    assert_ne!(texts[0], plain, "the vector steers");
    assert_ne!(texts[1], texts[0], "prompt-only differs from all");
    assert_ne!(texts[2], texts[0], "generated-only differs from all");
    // generated: the first token comes from the unsteered prompt.
    assert_eq!(texts[2][0], plain[0]);
}

#[test]
fn multiplier_zero_is_bit_identical_in_every_mode() {
    let (lm, prompt, _) = setup();
    let v =
        bipo::io::read_vector(&common::root().join("assets/happy-control-vector.gguf")).unwrap();
    let zero =
        Steering::from_vectors(&[(v, 0.0)], lm.model.device(), candle_core::DType::F32).unwrap();
    let plain = run(&lm, &prompt, &Steering::none(), Positions::All);
    for mode in [Positions::All, Positions::Prompt, Positions::Generated] {
        let z = run(&lm, &prompt, &zero, mode);
        assert_eq!(z.len(), plain.len());
        for (a, b) in z.iter().zip(&plain) {
            assert_eq!(
                (a.id, a.logprob.to_bits()),
                (b.id, b.logprob.to_bits()),
                "{mode}"
            );
        }
    }
}

#[test]
fn position_names_parse_and_print() {
    for (s, p) in [
        ("all", Positions::All),
        ("prompt", Positions::Prompt),
        ("generated", Positions::Generated),
    ] {
        assert_eq!(s.parse::<Positions>().unwrap(), p);
        assert_eq!(p.to_string(), s);
    }
    let e = "response".parse::<Positions>().unwrap_err().to_string();
    assert!(e.contains("choose all, prompt or generated"), "{e}");
}
