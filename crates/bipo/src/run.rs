//! The typed record every training run writes beside its output (`run.json`): what
//! was trained, how, on what model and data (with sha256s), by which command. `bipo
//! train`, `compare` and `sweep-layers` all write this same type.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::load::LoadedModel;
use crate::train::TrainConfig;

/// Identity of a model as loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The path or Hub id given.
    pub source: String,
    pub family: String,
    /// "gguf" or "safetensors".
    pub format: String,
    /// Weight storage (quantization types).
    pub weights: String,
    /// sha256 of the GGUF file, or of a folder's config and weight files (see
    /// [`crate::load::model_sha256`]).
    pub sha256: Option<String>,
    /// PEFT LoRA adapters merged at load, each "PATH sha256:SHA", in order (`sha256`
    /// above then identifies base and adapters together).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<String>,
    /// How training multiplied quantized weights (`--train-dtype`); absent in records
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_weights: Option<crate::models::TrainWeights>,
    /// What `train_weights` multiplied with on the CPU that ran
    /// ([`crate::models::TrainWeights::arithmetic`]); absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_arithmetic: Option<String>,
}

impl ModelRecord {
    pub fn of(lm: &LoadedModel) -> Result<Self> {
        let info = &lm.model.info;
        Ok(Self {
            source: info.source.clone(),
            family: info.family.clone(),
            format: info.format.clone(),
            weights: info.weights.clone(),
            sha256: crate::load::model_sha256(lm)?,
            lora: lm
                .lora
                .iter()
                .map(|a| format!("{} sha256:{}", a.path.display(), a.sha256))
                .collect(),
            train_weights: Some(lm.model.train_weights()),
            train_arithmetic: Some(lm.model.train_weights().arithmetic().to_string()),
        })
    }
}

/// Identity of a data file as loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub path: String,
    pub sha256: String,
    pub format: String,
    pub pairs: usize,
    /// Records dropped under `--skip-invalid-rows`, each "line N: reason".
    #[serde(default)]
    pub skipped: Vec<String>,
}

impl DataRecord {
    pub fn of(path: &Path, d: &Dataset) -> Self {
        Self {
            path: path.display().to_string(),
            sha256: d.sha256.clone(),
            format: d.format.into(),
            pairs: d.pairs.len(),
            skipped: d.skipped.clone(),
        }
    }
}

/// `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// "bipo VERSION".
    pub tool: String,
    /// The training objective ("bipo").
    pub method: String,
    /// The command line, secrets redacted.
    pub command: String,
    pub created_unix: u64,
    pub config: TrainConfig,
    pub model: ModelRecord,
    pub data: DataRecord,
    pub test: Option<DataRecord>,
}

impl RunRecord {
    pub fn new(
        method: &str,
        config: &TrainConfig,
        model: ModelRecord,
        data: DataRecord,
        test: Option<DataRecord>,
    ) -> Self {
        Self {
            tool: format!("bipo {}", env!("CARGO_PKG_VERSION")),
            method: method.into(),
            command: crate::util::redact::this_command_line(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            config: config.clone(),
            model,
            data,
            test,
        }
    }

    /// What a resumed run must share with the run it continues.
    pub fn inputs(&self) -> RunInputs {
        RunInputs {
            model_sha256: self.model.sha256.clone(),
            data_sha256: Some(self.data.sha256.clone()),
            test_sha256: self.test.as_ref().map(|t| t.sha256.clone()),
        }
    }

    /// Writes `run.json` into `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("record serialises");
        crate::util::write_atomic(&dir.join(crate::train::trainer::RUN_FILE), &bytes)
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(crate::train::trainer::RUN_FILE);
        serde_json::from_str(&crate::util::read_text(&p)?)
            .map_err(|e| Error::bad_file(&p, e.to_string()))
    }
}

/// The inputs a checkpoint was made from; resuming with other inputs is refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInputs {
    pub model_sha256: Option<String>,
    pub data_sha256: Option<String>,
    pub test_sha256: Option<String>,
}

impl RunInputs {
    /// Names the first input that differs from `saved` (the checkpoint's).
    pub fn check_resumes(&self, saved: &RunInputs, checkpoint: &Path) -> Result<()> {
        let pairs = [
            ("model", &self.model_sha256, &saved.model_sha256),
            ("--data", &self.data_sha256, &saved.data_sha256),
            ("--test", &self.test_sha256, &saved.test_sha256),
        ];
        for (what, now, then) in pairs {
            if now != then {
                let show = |s: &Option<String>| {
                    s.as_deref().map_or("none".to_string(), |h| {
                        format!("sha256 {}", &h[..h.len().min(12)])
                    })
                };
                return Err(Error::bad_file(
                    checkpoint,
                    format!(
                        "the run was trained with {what} {} but this command gives {}; resume with the same files or start a new run",
                        show(then),
                        show(now)
                    ),
                ));
            }
        }
        Ok(())
    }
}
