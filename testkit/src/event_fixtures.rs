//! The events as earlier versions published them, frozen under `tests/fixtures/events/`: one file
//! per event type and version, in the envelope `kcat -C -J` prints (`key`, `headers` as a flat list
//! of name, value, ..., and `payload`, the value's bytes as a string), so a new one is captured from
//! a running mesh with kcat. A consumer that cannot read one of them would break on a topic that
//! still holds such events (docs/schema.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// One published event as it was on the topic.
#[derive(Debug, Clone)]
pub struct EventFixture {
    /// The file it was read from (its name says the event type and version).
    pub file: String,
    pub key: String,
    /// The headers in the order they were written.
    pub headers: Vec<(String, String)>,
    /// The value, byte for byte as published.
    pub payload: Vec<u8>,
}

impl EventFixture {
    /// The value of header `name`, if the event had it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where the fixtures are kept.
pub fn event_fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/events")
}

/// Every fixture, sorted by file name; a file that does not read as one is an error naming it.
pub fn event_fixtures() -> Result<Vec<EventFixture>> {
    let dir = event_fixtures_dir();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files.sort();
    ensure!(!files.is_empty(), "no event fixtures in {}", dir.display());
    files
        .iter()
        .map(|path| read(path).with_context(|| format!("event fixture {}", path.display())))
        .collect()
}

fn read(path: &Path) -> Result<EventFixture> {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let text = |field: &str| {
        json[field]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("`{field}` is not a string"))
    };
    let Some(flat) = json["headers"].as_array() else {
        bail!("`headers` is not a list");
    };
    ensure!(flat.len() % 2 == 0, "`headers` is not name, value pairs");
    let headers = flat
        .chunks(2)
        .map(|pair| match (pair[0].as_str(), pair[1].as_str()) {
            (Some(name), Some(value)) => Ok((name.to_owned(), value.to_owned())),
            _ => bail!("`headers` holds something other than strings: {pair:?}"),
        })
        .collect::<Result<_>>()?;
    Ok(EventFixture {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        key: text("key")?,
        headers,
        payload: text("payload")?.into_bytes(),
    })
}
