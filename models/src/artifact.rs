//! An artifact on disk: `manifest.json` + `weights.safetensors`, checked before use.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, MANIFEST_FORMAT};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// Why an artifact could not be loaded or saved. Each names the file or the artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid manifest: {source}")]
    Manifest { path: PathBuf, source: serde_json::Error },
    #[error("{path}: manifest format {found}, this agent reads format {expected} (retrain or upgrade)")]
    Format { path: PathBuf, found: u32, expected: u32 },
    #[error("{path}: weights do not match the manifest: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("{path}: weights checksum {found} differs from the manifest's {expected} (corrupt or replaced file)")]
    Checksum { path: PathBuf, found: String, expected: String },
}

/// A trained model ready to save: its manifest and the safetensors bytes of its weights.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub manifest: Manifest,
    pub weights: Vec<u8>,
}

impl Artifact {
    /// Writes `dir/manifest.json` and `dir/weights.safetensors` (creating `dir`). The weights
    /// go first, so a crash between the two leaves a manifest whose checksum refuses them.
    pub fn save(&self, dir: &Path) -> Result<(), ArtifactError> {
        std::fs::create_dir_all(dir).map_err(|source| ArtifactError::Io { path: dir.to_path_buf(), source })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        std::fs::write(&weights_path, &self.weights).map_err(|source| ArtifactError::Io { path: weights_path, source })?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let mut json =
            serde_json::to_vec_pretty(&self.manifest).map_err(|source| ArtifactError::Manifest { path: manifest_path.clone(), source })?;
        json.push(b'\n');
        std::fs::write(&manifest_path, json).map_err(|source| ArtifactError::Io { path: manifest_path, source })
    }

    /// Reads an artifact directory, checking the format and the weights' checksum.
    pub fn load(dir: &Path) -> Result<Artifact, ArtifactError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_json = std::fs::read(&manifest_path).map_err(|source| ArtifactError::Io { path: manifest_path, source })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let weights = std::fs::read(&weights_path).map_err(|source| ArtifactError::Io { path: weights_path, source })?;
        Artifact::from_bytes_at(dir, &manifest_json, weights)
    }

    /// Same as [`Artifact::load`], from bytes; `origin` names them in errors.
    pub fn from_bytes_at(origin: &Path, manifest_json: &[u8], weights: Vec<u8>) -> Result<Artifact, ArtifactError> {
        let path = origin.to_path_buf();
        // Read the format alone first: a manifest from another format may not parse at all,
        // and "wrong format" is the useful message then.
        #[derive(serde::Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let format: FormatOnly =
            serde_json::from_slice(manifest_json).map_err(|source| ArtifactError::Manifest { path: path.clone(), source })?;
        if format.format != MANIFEST_FORMAT {
            return Err(ArtifactError::Format { path, found: format.format, expected: MANIFEST_FORMAT });
        }
        let manifest: Manifest =
            serde_json::from_slice(manifest_json).map_err(|source| ArtifactError::Manifest { path: path.clone(), source })?;
        let found = sha256_hex(&weights);
        if !found.eq_ignore_ascii_case(&manifest.weights_sha256) {
            return Err(ArtifactError::Checksum { path, found, expected: manifest.weights_sha256.clone() });
        }
        Ok(Artifact { manifest, weights })
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
