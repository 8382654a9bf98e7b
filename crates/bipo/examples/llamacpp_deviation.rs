//! Log-probability deviation from llama.cpp, teacher-forced on its greedy tokens, for
//! the fast (quantized) and differentiable (f32) paths. Reads the reference facts in
//! `../shared/reference`; run from the workspace root:
//! `cargo run --release -p bipo --example llamacpp_deviation`.
use bipo::models::Mode;
use bipo::steer::Steering;
use candle_core::Tensor;
fn main() {
    let lm = bipo::load::load(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        &Default::default(),
    )
    .unwrap();
    let v = bipo::io::read_vector(
        "../shared/reference/smollm2-135m-instruct-q4_1/happy-control-vector.gguf".as_ref(),
    )
    .unwrap();
    for (file, mult) in [
        ("llamacpp-unsteered.json", 0.0f32),
        ("llamacpp-happy-scale+4.json", 4.0),
        ("llamacpp-happy-scale-4.json", -4.0),
    ] {
        let st = Steering::from_vectors(&[(v.clone(), mult)], lm.model.device(), lm.model.dtype())
            .unwrap();
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!(
                "../shared/reference/smollm2-135m-instruct-q4_1/{file}"
            ))
            .unwrap(),
        )
        .unwrap();
        for mode in [Mode::Fast, Mode::Differentiable] {
            let (mut sum, mut n, mut worst, mut first_worst) = (0f64, 0, 0f32, 0f32);
            for case in r["greedy"].as_array().unwrap() {
                let mut ids = lm
                    .tokenizer
                    .encode(case["prompt"].as_str().unwrap(), true)
                    .unwrap();
                let np = ids.len();
                ids.extend(
                    case["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as u32),
                );
                let t = Tensor::new(ids.as_slice(), lm.model.device())
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let logits = lm
                    .model
                    .forward(&t, 0, None, &st, None, mode)
                    .unwrap()
                    .squeeze(0)
                    .unwrap();
                for (si, step) in case["steps"].as_array().unwrap().iter().enumerate() {
                    let l: Vec<f32> = logits.get(np - 1 + si).unwrap().to_vec1().unwrap();
                    let lp = bipo::generate::log_softmax(&l);
                    for e in step["top"].as_array().unwrap() {
                        let id = e[0].as_u64().unwrap() as usize;
                        let d = (lp[id] - e[1].as_f64().unwrap() as f32).abs();
                        sum += d as f64;
                        n += 1;
                        worst = worst.max(d);
                        if si == 0 {
                            first_worst = first_worst.max(d);
                        }
                    }
                }
            }
            println!(
                "{file} {mode:?}: mean {:.4} max {:.4} first-step max {:.4}",
                sum / n as f64,
                worst,
                first_worst
            );
        }
    }
}
