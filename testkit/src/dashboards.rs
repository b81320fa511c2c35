//! The Grafana dashboards (`compose/grafana/dashboards/*.json`) as tests read them: for each
//! panel its title, the data source it queries and its PromQL queries. The checks compare them
//! with the provisioned data source; the live test runs every query on a real Prometheus.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Where the dashboards live, from the repository's root.
pub const DASHBOARDS_DIR: &str = "compose/grafana/dashboards";

/// One dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// The file's name, e.g. `overview.json`.
    pub file: String,
    pub title: String,
    pub panels: Vec<Panel>,
}

/// One panel of a dashboard.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    /// What the panel answers, shown on hover (every panel has one).
    pub description: String,
    /// The uid of the data source the panel queries.
    pub datasource_uid: String,
    /// Each target's PromQL expression.
    pub queries: Vec<String>,
}

/// Every dashboard under `root`/[`DASHBOARDS_DIR`], sorted by file name.
pub fn dashboards(root: &Path) -> Result<Vec<Dashboard>> {
    let dir = root.join(DASHBOARDS_DIR);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files.iter().map(|path| dashboard(path)).collect()
}

fn dashboard(path: &Path) -> Result<Dashboard> {
    let file = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default()
        .to_owned();
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{file} is not JSON"))?;
    let text = |value: &Value, what: &str| -> Result<String> {
        value
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{file}: {what} is not a string"))
    };
    let mut panels = Vec::new();
    for panel in json["panels"].as_array().into_iter().flatten() {
        let title = text(&panel["title"], "a panel's title")?;
        let queries = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|target| text(&target["expr"], &format!("{title}: a target's expr")))
            .collect::<Result<Vec<_>>>()?;
        panels.push(Panel {
            description: text(&panel["description"], &format!("{title}: description"))?,
            datasource_uid: text(&panel["datasource"]["uid"], &format!("{title}: datasource"))?,
            title,
            queries,
        });
    }
    Ok(Dashboard {
        title: text(&json["title"], "the title")?,
        file,
        panels,
    })
}
