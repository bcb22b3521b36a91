//! Pins: an image a deployed function runs stays usable however the store
//! changes. The engine pins the image when it deploys a version
//! (`pins/<key>/<image id>.json`, holding the image's record and who holds
//! it; the key names the daemon and the function, as several daemons may
//! share a store) and unpins when it removes the function; `prune` keeps
//! pinned layers, `remove` refuses a pinned image unless forced, and `lease`
//! finds a pinned image by its id even once its name is gone or names
//! another image.

use crate::store::{find, Store};
use crate::{ImageError, ImageRecord};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::PathBuf;

/// The most bytes of a pin file read (a record is a few KiB).
const MAX_PIN_BYTES: u64 = 1 << 20;

/// One pin: who holds which image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    /// Who holds it, such as `function hello`.
    pub holder: String,
    pub image: ImageRecord,
}

/// Pin keys: a directory name of 1 to 128 of a-z, 0-9, `-` and `_`.
fn valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key.as_bytes()[0].is_ascii_alphanumeric()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Store {
    fn pins_dir(&self) -> PathBuf {
        self.root.join("pins")
    }

    /// Finds the image `name` means and pins it under `key` (until
    /// [`Store::unpin`]) for `holder` (shown in messages, such as `function
    /// hello`), in one step under the index lock, so that no `remove` and
    /// `prune` can come between.
    pub fn pin(&self, name: &str, key: &str, holder: &str) -> Result<ImageRecord, ImageError> {
        if !valid_key(key) {
            return Err(ImageError::Invalid(format!(
                "{key:?} cannot hold an image: use 1 to 128 of a-z, 0-9, '-' and '_'"
            )));
        }
        let _lock = self.index_lock(true)?;
        let record = find(&self.read_index()?, name)?.clone();
        let io = |what: &'static str| ImageError::io(what);
        let dir = self.pins_dir().join(key);
        std::fs::create_dir_all(&dir).map_err(io("creating a pin directory"))?;
        let pin = Pin {
            holder: holder.to_owned(),
            image: record.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&pin).expect("a pin serialises");
        let tmp = dir.join(format!(".{}", alcove_sys::process::random_id()));
        let written = std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, dir.join(format!("{}.json", record.id))));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("writing a pin")(e));
        }
        Ok(record)
    }

    /// Drops every pin held under `key`.
    pub fn unpin(&self, key: &str) -> Result<(), ImageError> {
        if !valid_key(key) {
            return Ok(()); // nothing was ever pinned under it
        }
        let _lock = self.index_lock(true)?;
        match std::fs::remove_dir_all(self.pins_dir().join(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ImageError::io("removing pins")(e))
            }
            _ => Ok(()),
        }
    }

    /// The keys pins are held under.
    pub fn pin_keys(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.pins_dir()) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|k| valid_key(k))
            .collect();
        keys.sort();
        keys
    }

    /// Every pin, in key order. Damaged pin files are skipped: a pin
    /// only ever keeps layers, so losing one cannot remove what is in use
    /// by something else.
    pub fn pins(&self) -> Result<Vec<Pin>, ImageError> {
        let _lock = self.index_lock(false)?;
        self.read_pins()
    }

    pub(crate) fn read_pins(&self) -> Result<Vec<Pin>, ImageError> {
        let mut pins = Vec::new();
        let Ok(holders) = std::fs::read_dir(self.pins_dir()) else {
            return Ok(pins);
        };
        let mut files: Vec<PathBuf> = holders
            .flatten()
            .filter_map(|h| std::fs::read_dir(h.path()).ok())
            .flat_map(|d| d.flatten().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files {
            let mut bytes = Vec::new();
            let read = std::fs::File::open(&file)
                .and_then(|f| f.take(MAX_PIN_BYTES).read_to_end(&mut bytes));
            if read.is_ok() {
                if let Ok(pin) = serde_json::from_slice::<Pin>(&bytes) {
                    pins.push(pin);
                }
            }
        }
        Ok(pins)
    }
}

/// `holders` as a list for a message: `function a, function b`.
pub(crate) fn holders(pins: &[&Pin]) -> String {
    let mut names: Vec<&str> = pins.iter().map(|p| p.holder.as_str()).collect();
    names.sort();
    names.dedup();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Index;
    use crate::{LayerInfo, RunConfig};
    use std::collections::BTreeMap;

    fn record(name: &str, id: &str, layer: &str) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            id: id.repeat(64 / id.len()),
            layers: vec![layer.repeat(64 / layer.len())],
            config: RunConfig::default(),
            architecture: "amd64".into(),
            os: "linux".into(),
            created: None,
            imported_at: 0,
        }
    }

    fn stored(store: &Store, r: &ImageRecord) {
        std::fs::create_dir_all(store.layer_dir(&r.layers[0])).unwrap();
        let info = LayerInfo {
            bytes: 1,
            entries: 1,
        };
        let layers = BTreeMap::from([(r.layers[0].clone(), info)]);
        store.add(r.clone(), &layers).unwrap();
    }

    #[test]
    fn short_names_find_the_one_image_and_name_all_when_several_fit() {
        let mut index = Index::default();
        index
            .images
            .push(record("docker.io/library/app:2", "a", "1"));
        let found = |index: &Index, n: &str| find(index, n).map(|r| r.name.clone());
        for short in [
            "app:2",
            "library/app:2",
            "docker.io/app:2",
            "docker.io/library/app:2",
        ] {
            assert_eq!(
                found(&index, short).unwrap(),
                "docker.io/library/app:2",
                "{short}"
            );
        }
        assert!(matches!(find(&index, "app"), Err(ImageError::NotFound(_))));
        index
            .images
            .push(record("docker.io/library/app:latest", "b", "2"));
        assert_eq!(
            found(&index, "app").unwrap(),
            "docker.io/library/app:latest"
        );
        index.images.push(record("library/app:2", "c", "3"));
        assert_eq!(
            found(&index, "library/app:2").unwrap(),
            "library/app:2",
            "exact wins"
        );
        let e = find(&index, "app:2").unwrap_err().to_string();
        assert_eq!(
            e,
            "\"app:2\" could be any of docker.io/library/app:2, library/app:2: give the whole name"
        );
    }

    #[test]
    fn pinned_images_survive_rm_and_prune_until_unpinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let app = record("docker.io/library/app:2", "a", "1");
        stored(&store, &app);
        let pinned = store.pin("app:2", "d1-hello", "function hello").unwrap();
        assert_eq!(pinned.id, app.id);
        assert!(store.pin("app:2", "../x", "function x").is_err());
        assert_eq!(store.pin_keys(), ["d1-hello"]);
        let e = store.remove("app:2", false).unwrap_err().to_string();
        assert!(e.contains("pinned by function hello"), "{e}");
        store.remove("app:2", true).unwrap();
        let report = store.prune().unwrap();
        assert_eq!(report.removed_layers, 0);
        assert_eq!(
            report.pinned,
            [format!(
                "docker.io/library/app:2 ({}) for function hello",
                &app.id[..12]
            )]
        );
        assert!(store.layer_dir(&app.layers[0]).is_dir());
        let (leased, lease) = store.lease(&app.id).unwrap();
        assert_eq!(leased, app, "found by id through its pin");
        drop(lease);
        store.unpin("d1-hello").unwrap();
        assert!(store.lease(&app.id).is_err());
        assert_eq!(store.prune().unwrap().removed_layers, 1);
        assert!(!store.layer_dir(&app.layers[0]).exists());
    }
}
