//! An output path that is one of the command's inputs is refused before any work.

use std::path::Path;

use crate::support::*;

/// A temp folder with a copy of the happy vector and a hard link to the model.
fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let v = happy(d.path());
    let m = d.path().join("model.gguf");
    // A hard link costs nothing and is the model file itself.
    if std::fs::hard_link(model(), &m).is_err() {
        std::fs::copy(model(), &m).unwrap();
    }
    (d, m, v)
}

#[test]
fn bake_into_its_own_model_is_refused() {
    let (d, m, v) = setup();
    let before = Inputs::of(&[&m, &v]);
    fails(
        &bipo(&["bake", "-m", s(&m), "-v", s(&v), "-o", s(&m)]),
        2,
        &["--out", "--model", "model.gguf"],
    );
    before.unchanged();
    no_leftovers(d.path());
}

#[test]
fn bake_into_its_vector_is_refused() {
    let (d, m, v) = setup();
    let before = Inputs::of(&[&m, &v]);
    fails(
        &bipo(&[
            "bake",
            "-m",
            s(&m),
            "-v",
            &format!("{}:2", s(&v)),
            "-o",
            s(&v),
        ]),
        2,
        &["--vector", "happy.gguf"],
    );
    before.unchanged();
    no_leftovers(d.path());
}

#[test]
fn bake_through_a_symlink_to_the_model_is_refused() {
    let (d, m, v) = setup();
    let link = d.path().join("alias.gguf");
    std::os::unix::fs::symlink(&m, &link).unwrap();
    let before = Inputs::of(&[&m, &v]);
    fails(
        &bipo(&["bake", "-m", s(&m), "-v", s(&v), "-o", s(&link)]),
        2,
        &["alias.gguf", "--model"],
    );
    before.unchanged();
}

#[test]
fn bake_through_a_hard_link_and_dots_is_refused() {
    let (d, m, v) = setup();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    let dotted = d.path().join("sub/../model.gguf");
    let before = Inputs::of(&[&m, &v]);
    fails(
        &bipo(&["bake", "-m", &model(), "-v", s(&v), "-o", s(&dotted)]),
        2,
        &["--model"],
    );
    before.unchanged();
}

#[test]
fn bake_into_a_non_gguf_name_is_refused() {
    let (d, m, v) = setup();
    let out = d.path().join("baked.safetensors");
    fails(
        &bipo(&["bake", "-m", s(&m), "-v", s(&v), "-o", s(&out)]),
        2,
        &["baked.safetensors", ".gguf"],
    );
    assert!(!out.exists());
}

#[test]
fn vector_convert_onto_itself_is_refused() {
    let (d, _, v) = setup();
    let before = Inputs::of(&[&v]);
    let same = d.path().join("./happy.gguf");
    fails(
        &bipo(&["vector", "convert", s(&v), s(&same)]),
        2,
        &["happy.gguf", "refusing to overwrite"],
    );
    before.unchanged();
}

#[test]
fn vector_scale_onto_itself_is_refused() {
    let (_d, _, v) = setup();
    let before = Inputs::of(&[&v]);
    fails(
        &bipo(&["vector", "scale", s(&v), "2", s(&v)]),
        2,
        &["happy.gguf"],
    );
    before.unchanged();
}

#[test]
fn vector_combine_onto_one_of_its_inputs_is_refused() {
    let (d, _, v) = setup();
    let w = d.path().join("w.safetensors");
    succeeds(&bipo(&["vector", "convert", s(&v), s(&w)]));
    let before = Inputs::of(&[&v, &w]);
    fails(
        &bipo(&[
            "vector",
            "combine",
            "-o",
            s(&w),
            &format!("{}:1", s(&v)),
            &format!("{}:-1", s(&w)),
        ]),
        2,
        &["w.safetensors"],
    );
    before.unchanged();
}

#[test]
fn vector_output_with_an_unknown_extension_is_refused() {
    let (d, _, v) = setup();
    let out = d.path().join("v.txt");
    fails(
        &bipo(&["vector", "convert", s(&v), s(&out)]),
        2,
        &["v.txt", ".safetensors or .gguf"],
    );
    assert!(!out.exists());
}

#[test]
fn baseline_into_its_data_is_refused() {
    let (d, m, _) = setup();
    let data = pairs(d.path(), 4);
    let renamed = d.path().join("pairs.safetensors");
    std::fs::copy(&data, &renamed).unwrap();
    let before = Inputs::of(&[&renamed]);
    // A data file with a vector's extension: still an input, still refused.
    fails(
        &bipo(&[
            "baseline",
            "caa",
            "-m",
            s(&m),
            "--data",
            s(&renamed),
            "--layer",
            "3",
            "-o",
            s(&renamed),
        ]),
        2,
        &["--data", "pairs.safetensors"],
    );
    before.unchanged();
}

#[test]
fn baseline_random_onto_its_like_vector_is_refused() {
    let (_d, _, v) = setup();
    let before = Inputs::of(&[&v]);
    fails(
        &bipo(&["baseline", "random", "--like", s(&v), "-o", s(&v)]),
        2,
        &["--like"],
    );
    before.unchanged();
}

#[test]
fn baseline_with_a_pt_output_name_is_refused() {
    let (d, _, v) = setup();
    let out = d.path().join("r.pt");
    fails(
        &bipo(&["baseline", "random", "--like", s(&v), "-o", s(&out)]),
        2,
        &["r.pt", ".safetensors or .gguf"],
    );
    assert!(!out.exists());
}

#[test]
fn train_into_a_folder_where_the_data_is_a_run_file_is_refused() {
    let (d, m, _) = setup();
    let out = d.path().join("run");
    std::fs::create_dir(&out).unwrap();
    let data = out.join("metrics.jsonl");
    std::fs::write(
        &data,
        "{\"question\":\"q\",\"matching\":\"a\",\"not_matching\":\"b\"}\n",
    )
    .unwrap();
    let before = Inputs::of(&[&data]);
    fails(
        &bipo(&["train", "-m", s(&m), "--data", s(&data), "-o", s(&out)]),
        2,
        &["--data", "metrics.jsonl"],
    );
    before.unchanged();
}

#[test]
fn train_with_the_data_file_as_output_folder_is_refused() {
    let (d, m, _) = setup();
    let data = pairs(d.path(), 4);
    let before = Inputs::of(&[&data]);
    fails(
        &bipo(&["train", "-m", s(&m), "--data", s(&data), "-o", s(&data)]),
        2,
        &["pairs.csv"],
    );
    before.unchanged();
}

#[test]
fn eval_into_a_folder_holding_its_data_under_a_report_name_is_refused() {
    let (d, m, v) = setup();
    let data = d.path().join("answers.jsonl");
    std::fs::write(
        &data,
        "{\"question\":\"q\",\"matching\":\"a\",\"not_matching\":\"b\"}\n",
    )
    .unwrap();
    let before = Inputs::of(&[&data, &v]);
    fails(
        &bipo(&[
            "eval",
            "-m",
            s(&m),
            "-v",
            s(&v),
            "--data",
            s(&data),
            "-o",
            s(d.path()),
        ]),
        2,
        &["--data", "answers.jsonl"],
    );
    before.unchanged();
}

#[test]
fn eval_with_a_vector_file_as_output_folder_is_refused() {
    let (d, m, v) = setup();
    let data = pairs(d.path(), 2);
    let before = Inputs::of(&[&v]);
    fails(
        &bipo(&[
            "eval",
            "-m",
            s(&m),
            "-v",
            s(&v),
            "--data",
            s(&data),
            "-o",
            s(&v),
        ]),
        2,
        &["happy.gguf", "not a folder"],
    );
    before.unchanged();
}

#[test]
fn compare_would_overwrite_its_bipo_vector_in_out_vectors() {
    let (d, m, v) = setup();
    let out = d.path().join("cmp");
    std::fs::create_dir_all(out.join("vectors")).unwrap();
    let b = out.join("vectors/bipo.safetensors");
    succeeds(&bipo(&["vector", "convert", s(&v), s(&b)]));
    let data = pairs(d.path(), 2);
    let before = Inputs::of(&[&b]);
    fails(
        &bipo(&[
            "compare",
            "-m",
            s(&m),
            "--bipo",
            s(&b),
            "--train",
            s(&data),
            "--data",
            s(&data),
            "-o",
            s(&out),
        ]),
        2,
        &["--bipo", "bipo.safetensors"],
    );
    before.unchanged();
}

#[test]
fn sweep_into_a_folder_holding_its_training_data_is_refused() {
    let (d, m, _) = setup();
    let data = pairs(d.path(), 2);
    let sub = d.path().join("train-subset.csv");
    std::fs::copy(&data, &sub).unwrap();
    let before = Inputs::of(&[&sub]);
    fails(
        &bipo(&[
            "sweep-layers",
            "-m",
            s(&m),
            "--train",
            s(&sub),
            "--data",
            s(&data),
            "-o",
            s(d.path()),
        ]),
        2,
        &["--train", "train-subset.csv"],
    );
    before.unchanged();
}

#[test]
fn an_unwritable_output_folder_is_found_before_loading_anything() {
    let (d, _, v) = setup();
    let data = pairs(d.path(), 2);
    // Under a regular file no folder can be made; the model does not even exist, so an
    // error about the folder proves the check ran first.
    let out = Path::new(s(&data)).join("report");
    fails(
        &bipo(&[
            "eval",
            "-m",
            "/no/such/model.gguf",
            "-v",
            s(&v),
            "--data",
            s(&data),
            "-o",
            s(&out),
        ]),
        2,
        &["pairs.csv/report"],
    );
}
