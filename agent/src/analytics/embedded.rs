//! The demo's artifacts, compiled into the binary (`artifact = "embedded:NAME"`), from
//! `models/artifacts/demo/NAME/`. Regenerate them with `edge-agent demo build-artifacts`
//! (see docs/models.md, "The demo's models"), then rebuild.

use edge_models::Model;

/// The names of the artifacts shipped in the binary.
pub const NAMES: [&str; 3] = ["juice-pump-anomaly", "syrup-purity", "mill-bearing-rul"];

macro_rules! artifact {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../../models/artifacts/demo/", $name, "/manifest.json")).as_slice(),
            include_bytes!(concat!("../../../models/artifacts/demo/", $name, "/weights.safetensors")).as_slice(),
        )
    };
}

/// (name, manifest.json, weights.safetensors).
const ARTIFACTS: &[(&str, &[u8], &[u8])] = &[artifact!("juice-pump-anomaly"), artifact!("syrup-purity"), artifact!("mill-bearing-rul")];

/// Loads the embedded artifact `name`, checked like one from disk.
pub fn load(name: &str) -> Result<Model, String> {
    let Some((_, manifest, weights)) = ARTIFACTS.iter().find(|(n, _, _)| *n == name) else {
        return Err(format!("no embedded artifact {name:?} in this build (embedded: {})", NAMES.join(", ")));
    };
    Model::from_bytes(manifest, weights).map_err(|e| format!("embedded artifact {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_artifact_loads_and_is_what_its_name_says() {
        for name in NAMES {
            let model = load(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(model.manifest().name, name);
        }
        assert!(load("nope").unwrap_err().contains("no embedded artifact"));
    }

    #[test]
    fn the_shipped_artifacts_stay_small() {
        let total: usize = ARTIFACTS.iter().map(|(_, m, w)| m.len() + w.len()).sum();
        assert!(total < 5 * 1024 * 1024, "{total} bytes");
    }
}
