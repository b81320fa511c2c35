//! A real Prometheus server of a test's own (Debian's `prometheus`), on a free loopback port,
//! scraping the admin ports a test names every second and evaluating the rule files it is given
//! every second; and the two questions a test asks it over its HTTP API: an instant query, and the
//! alerts pending or firing. Targets come from files (`file_sd_configs`), so a test that restarts
//! a service on a new admin port points Prometheus at it, as service discovery would.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::{Process, addr::unused_addr, tools::tool, wait::eventually};

/// How often the test's Prometheus scrapes and evaluates rules: fast, so a test waits seconds.
pub const PROMETHEUS_INTERVAL: Duration = Duration::from_secs(1);

/// One series of a query's answer: its labels and its value.
pub type Sample = (BTreeMap<String, String>, f64);

/// An alert as `/api/v1/alerts` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub name: String,
    /// `pending` (condition true, `for` not yet over) or `firing`.
    pub state: String,
    pub labels: BTreeMap<String, String>,
}

/// A running Prometheus, killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    process: Process,
    url: String,
    http: reqwest::Client,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with a scrape job for each of `jobs` (plain HTTP `/metrics`, no target
    /// until [`Prometheus::set_targets`]) and evaluating `rules` (file name, contents). None
    /// (locally) when Prometheus is not installed.
    pub async fn start(jobs: &[&str], rules: &[(&str, String)]) -> Result<Option<Self>> {
        let Some(program) = tool("prometheus")? else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let interval = format!("{}s", PROMETHEUS_INTERVAL.as_secs());
        let mut config = format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\nrule_files:\n"
        );
        for (name, contents) in rules {
            std::fs::write(dir.path().join(name), contents)?;
            config.push_str(&format!("  - {name}\n"));
        }
        config.push_str("scrape_configs:\n");
        for job in jobs {
            std::fs::write(dir.path().join(format!("{job}.json")), "[]")?;
            config.push_str(&format!(
                "  - job_name: {job}\n    file_sd_configs:\n      - files: ['{job}.json']\n        refresh_interval: {interval}\n"
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let addr = unused_addr().await?;
        let process = Process::spawn(
            "prometheus",
            &program,
            &[
                format!("--config.file={}", config_file.display()),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address={addr}"),
                "--log.level=warn".to_owned(),
            ],
            &[],
            dir.path().join("prometheus.log"),
        )?;
        let prometheus = Self {
            process,
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
            dir,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        eventually("Prometheus is ready", || async {
            Ok(prometheus
                .http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()))
        })
        .await
        .with_context(|| prometheus.process.log_text())?;
        Ok(Some(prometheus))
    }

    /// Points job `job` at `targets` (replacing what it scraped before); Prometheus reads the
    /// file again within a second.
    pub fn set_targets(&self, job: &str, targets: &[SocketAddr]) -> Result<()> {
        let targets: Vec<String> = targets.iter().map(ToString::to_string).collect();
        let groups = serde_json::json!([{ "targets": targets }]);
        // Written whole, then renamed: Prometheus never reads half a file.
        let file = self.dir.path().join(format!("{job}.json"));
        let next = file.with_extension("json.next");
        std::fs::write(&next, groups.to_string())?;
        std::fs::rename(next, file)?;
        Ok(())
    }

    /// The answer to the instant query `expr` (a vector; a scalar is one sample without labels).
    /// A query Prometheus refuses (bad syntax) is an error naming it.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>> {
        let body = self.get("/api/v1/query", &[("query", expr)]).await?;
        let data = &body["data"];
        let number = |v: &Value| -> Result<f64> {
            v[1].as_str()
                .context("a sample's value")?
                .parse::<f64>()
                .context("a sample's value is a number")
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|series| Ok((labels(&series["metric"]), number(&series["value"])?)))
                .collect(),
            Some("scalar") => Ok(vec![(BTreeMap::new(), number(&data["result"])?)]),
            other => bail!("{expr}: unexpected result type {other:?}"),
        }
    }

    /// The alerts now pending or firing.
    pub async fn alerts(&self) -> Result<Vec<Alert>> {
        let body = self.get("/api/v1/alerts", &[]).await?;
        Ok(body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|alert| {
                let labels = labels(&alert["labels"]);
                Alert {
                    name: labels.get("alertname").cloned().unwrap_or_default(),
                    state: alert["state"].as_str().unwrap_or_default().to_owned(),
                    labels,
                }
            })
            .collect())
    }

    /// Whether every target is being scraped successfully.
    pub async fn all_targets_up(&self) -> Result<bool> {
        let up = self.query("up").await?;
        Ok(!up.is_empty() && up.iter().all(|(_, value)| *value == 1.0))
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .with_context(|| format!("Prometheus {path}"))?;
        let body: Value = response.json().await?;
        if body["status"] != "success" {
            bail!("Prometheus {path} {query:?}: {body}");
        }
        Ok(body)
    }
}

fn labels(metric: &Value) -> BTreeMap<String, String> {
    metric
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}
