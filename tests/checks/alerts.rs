//! The alert rules (`compose/prometheus/alerts.yml`) with Prometheus's own tool: they load, their
//! unit tests (`alerts.test.yml`, made-up series) pass, every alert has a test that sees it fire,
//! and a rule broken on purpose fails those tests: a check that cannot fail proves nothing. The
//! dashboards are read too: every panel says what it answers and queries something. (Whether the
//! queries and rules fit the metrics the services really export is for
//! `tests/mesh/operations/dashboards.rs`, on a real Prometheus scraping a running mesh.)

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result, ensure};
use serde_yaml::Value;

use crate::tool_run::run as promtool;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RULES_DIR: &str = "compose/prometheus";

fn yaml(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(serde_yaml::from_str(&text)?)
}

/// The names of the alerts a rules file defines.
fn alert_names(rules: &Value) -> BTreeSet<String> {
    rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_sequence().into_iter().flatten())
        .filter_map(|rule| rule["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_alert_rules_load_and_pass_their_unit_tests() -> Result<()> {
    let Some(tool) = ordermesh_testkit::tool("promtool")? else {
        return Ok(());
    };
    let dir = Path::new(ROOT).join(RULES_DIR);
    let config = promtool(&tool, &dir, &["check", "config", "prometheus.yml"])?;
    ensure!(
        config.success,
        "promtool check config prometheus.yml:\n{}",
        config.output
    );
    let rules = promtool(&tool, &dir, &["test", "rules", "alerts.test.yml"])?;
    ensure!(
        rules.success,
        "promtool test rules alerts.test.yml:\n{}",
        rules.output
    );
    Ok(())
}

/// A new alert without a test that sees it fire fails here, and so does a test of an alert that
/// no longer exists.
#[test]
fn every_alert_has_a_unit_test_that_sees_it_fire() -> Result<()> {
    let dir = Path::new(ROOT).join(RULES_DIR);
    let defined = alert_names(&yaml(&dir.join("alerts.yml"))?);
    ensure!(defined.len() >= 6, "the rules define {defined:?}");
    let tests = yaml(&dir.join("alerts.test.yml"))?;
    let mut seen_firing = BTreeSet::new();
    for test in tests["tests"].as_sequence().into_iter().flatten() {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().context("alertname")?.to_owned();
            ensure!(
                defined.contains(&name),
                "alerts.test.yml tests {name}, which alerts.yml does not define"
            );
            if case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty())
            {
                seen_firing.insert(name);
            }
        }
    }
    let untested: Vec<_> = defined.difference(&seen_firing).collect();
    ensure!(
        untested.is_empty(),
        "no test in alerts.test.yml sees these fire: {untested:?}"
    );
    // And each alert tells the on-call engineer what is wrong and what to do.
    for group in yaml(&dir.join("alerts.yml"))?["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"].as_str().unwrap_or("a recording rule");
            for key in ["summary", "description"] {
                ensure!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|t| t.len() > 20),
                    "{name} has no {key}"
                );
            }
            ensure!(
                rule["labels"]["severity"].as_str().is_some(),
                "{name} has no severity"
            );
        }
    }
    Ok(())
}

/// The unit tests catch a changed rule: the circuit alert made to fire on half-open, and the
/// error-ratio threshold raised tenfold, each fail them, naming the alert.
#[test]
fn a_rule_broken_on_purpose_fails_its_unit_tests() -> Result<()> {
    let Some(tool) = ordermesh_testkit::tool("promtool")? else {
        return Ok(());
    };
    let dir = Path::new(ROOT).join(RULES_DIR);
    let rules = std::fs::read_to_string(dir.join("alerts.yml"))?;
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml"))?;
    for (from, to, alert) in [
        (
            "(ordermesh_payment_breaker_state) == 2",
            "(ordermesh_payment_breaker_state) >= 1",
            "PaymentCircuitOpen",
        ),
        ("> 0.05", "> 0.5", "CreateOrderErrorRatioHigh"),
    ] {
        ensure!(rules.contains(from), "alerts.yml no longer has {from}");
        let copy = tempfile::tempdir()?;
        std::fs::write(copy.path().join("alerts.yml"), rules.replace(from, to))?;
        std::fs::write(copy.path().join("alerts.test.yml"), &tests)?;
        let broken = promtool(&tool, copy.path(), &["test", "rules", "alerts.test.yml"])?;
        ensure!(
            !broken.success,
            "the tests pass with `{from}` changed to `{to}`:\n{}",
            broken.output
        );
        ensure!(
            broken.output.contains(&format!("alertname: {alert}")),
            "the failure names {alert}:\n{}",
            broken.output
        );
    }
    Ok(())
}

#[test]
fn every_panel_says_what_it_answers_and_queries_something() -> Result<()> {
    let boards = ordermesh_testkit::dashboards(Path::new(ROOT))?;
    let files: Vec<&str> = boards.iter().map(|b| b.file.as_str()).collect();
    assert_eq!(
        files,
        ["asynchronous.json", "overview.json", "synchronous.json"],
        "the three boards"
    );
    for board in &boards {
        ensure!(!board.panels.is_empty(), "{} has no panels", board.file);
        for panel in &board.panels {
            ensure!(
                panel.description.len() > 20,
                "{}: {:?} does not say what it answers",
                board.file,
                panel.title
            );
            ensure!(
                !panel.queries.is_empty() && panel.queries.iter().all(|q| !q.trim().is_empty()),
                "{}: {:?} queries nothing",
                board.file,
                panel.title
            );
        }
    }
    Ok(())
}
